/*
 * pickle: bounded, non-executing reader for the device IPC descriptor (see
 * pickle.h). The pickle machine is simulated over fixed pools: values are
 * indices into `vals`, tuples own a run of `kids`, dicts a linked list of
 * `pairs`. No opcode ever calls anything; the two REDUCEs protocol 2 needs
 * for bytes are recognised by their global's name and evaluated here.
 */
#include "wire/pickle.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

enum pk_type { PK_NONE, PK_BOOL, PK_INT, PK_BYTES, PK_STR, PK_TUPLE, PK_DICT, PK_GLOBAL, PK_OBJ };

#define NIL UINT32_MAX
#define MARK_ENTRY (UINT32_MAX - 1)

struct pk_val {
    uint8_t type;
    bool b;
    int64_t i;
    const uint8_t *p; /* BYTES / STR */
    uint32_t n;
    uint32_t x, y; /* TUPLE: kids[x..x+y); DICT: pair head, tail; GLOBAL: module, name;
                      OBJ: class, state */
};

struct pk_pair {
    uint32_t key, val, next;
};

struct pk {
    const uint8_t *p, *end;
    struct pickle_ipc *out;
    struct pk_val vals[PICKLE_MAX_VALUES];
    uint32_t n_vals;
    uint32_t kids[PICKLE_MAX_VALUES];
    uint32_t n_kids;
    struct pk_pair pairs[PICKLE_MAX_VALUES];
    uint32_t n_pairs;
    uint32_t stack[PICKLE_MAX_STACK];
    uint32_t sp;
    uint32_t memo[PICKLE_MAX_MEMO];
    uint32_t n_memo; /* MEMOIZE's next index */
};

#define PICKLE_ERR_MSG_(sym, val, msg) case PICKLE_##sym: return msg;
const char *pickle_strerror(int rc)
{
    switch (-rc) {
        PICKLE_ERRORS(PICKLE_ERR_MSG_)
    default: return wire_strerror(rc);
    }
}
#undef PICKLE_ERR_MSG_

/* ---- machine primitives -------------------------------------------------- */

static int take(struct pk *k, size_t n, const uint8_t **q)
{
    if ((size_t)(k->end - k->p) < n)
        return -PICKLE_ETRUNC;
    *q = k->p;
    k->p += n;
    return 0;
}

static uint64_t le(const uint8_t *q, int n)
{
    uint64_t v = 0;
    for (int j = n - 1; j >= 0; j--)
        v = (v << 8) | q[j];
    return v;
}

static int new_val(struct pk *k, uint8_t type, uint32_t *idx)
{
    if (k->n_vals >= PICKLE_MAX_VALUES)
        return -PICKLE_ELIMIT;
    *idx = k->n_vals++;
    memset(&k->vals[*idx], 0, sizeof(k->vals[*idx]));
    k->vals[*idx].type = type;
    return 0;
}

static int push(struct pk *k, uint32_t v)
{
    if (k->sp >= PICKLE_MAX_STACK)
        return -PICKLE_ELIMIT;
    k->stack[k->sp++] = v;
    return 0;
}

static int push_new(struct pk *k, uint8_t type, struct pk_val **v)
{
    uint32_t idx;
    int rc = new_val(k, type, &idx);
    if (rc == 0 && (rc = push(k, idx)) == 0)
        *v = &k->vals[idx];
    return rc;
}

static int pop(struct pk *k, uint32_t *v)
{
    if (k->sp == 0 || k->stack[k->sp - 1] == MARK_ENTRY)
        return -PICKLE_ESTACK;
    *v = k->stack[--k->sp];
    return 0;
}

static int pop_type(struct pk *k, uint8_t type, uint32_t *v)
{
    int rc = pop(k, v);
    return rc < 0 ? rc : k->vals[*v].type == type ? 0 : -PICKLE_ESTACK;
}

/* Index of the topmost MARK in the stack. */
static int find_mark(struct pk *k, uint32_t *at)
{
    for (uint32_t j = k->sp; j > 0; j--)
        if (k->stack[j - 1] == MARK_ENTRY) {
            *at = j - 1;
            return 0;
        }
    return -PICKLE_ESTACK;
}

/* Builds a tuple from the top n stack entries (none may be a MARK). */
static int make_tuple(struct pk *k, uint32_t n)
{
    if (k->sp < n || k->n_kids + n > PICKLE_MAX_VALUES)
        return n > k->sp ? -PICKLE_ESTACK : -PICKLE_ELIMIT;
    uint32_t base = k->sp - n;
    for (uint32_t j = base; j < k->sp; j++)
        if (k->stack[j] == MARK_ENTRY)
            return -PICKLE_ESTACK;
    uint32_t idx;
    int rc = new_val(k, PK_TUPLE, &idx);
    if (rc < 0)
        return rc;
    k->vals[idx].x = k->n_kids;
    k->vals[idx].y = n;
    memcpy(&k->kids[k->n_kids], &k->stack[base], n * sizeof(uint32_t));
    k->n_kids += n;
    k->sp = base;
    return push(k, idx);
}

static int dict_add(struct pk *k, uint32_t dict, uint32_t key, uint32_t val)
{
    if (k->n_pairs >= PICKLE_MAX_VALUES)
        return -PICKLE_ELIMIT;
    uint32_t j = k->n_pairs++;
    k->pairs[j] = (struct pk_pair){ key, val, NIL };
    struct pk_val *d = &k->vals[dict];
    if (d->x == NIL)
        d->x = j;
    else
        k->pairs[d->y].next = j;
    d->y = j;
    return 0;
}

/* SETITEMS: pairs above the mark go into the dict below it. */
static int set_items(struct pk *k)
{
    uint32_t mark;
    int rc = find_mark(k, &mark);
    if (rc < 0)
        return rc;
    if (mark == 0 || (k->sp - mark - 1) % 2 || k->stack[mark - 1] == MARK_ENTRY ||
        k->vals[k->stack[mark - 1]].type != PK_DICT)
        return -PICKLE_ESTACK;
    for (uint32_t j = mark + 1; j < k->sp && rc == 0; j += 2)
        rc = dict_add(k, k->stack[mark - 1], k->stack[j], k->stack[j + 1]);
    k->sp = mark;
    return rc;
}

static int read_str(struct pk *k, uint8_t type, int width)
{
    const uint8_t *q;
    int rc = take(k, (size_t)width, &q);
    if (rc < 0)
        return rc;
    uint64_t n = le(q, width);
    if (n > (uint64_t)(k->end - k->p))
        return -PICKLE_ETRUNC;
    struct pk_val *v;
    if ((rc = push_new(k, type, &v)) < 0)
        return rc;
    v->p = k->p;
    v->n = (uint32_t)n;
    k->p += n;
    return 0;
}

static int read_int(struct pk *k, int width, bool is_signed)
{
    const uint8_t *q;
    int rc = take(k, (size_t)width, &q);
    if (rc < 0)
        return rc;
    struct pk_val *v;
    if ((rc = push_new(k, PK_INT, &v)) < 0)
        return rc;
    uint64_t u = le(q, width);
    v->i = is_signed ? (int64_t)(int32_t)(uint32_t)u : (int64_t)u;
    return 0;
}

/* LONG1: n little-endian two's-complement bytes; more than 8 is out of range. */
static int read_long1(struct pk *k)
{
    const uint8_t *q;
    int rc = take(k, 1, &q);
    if (rc < 0)
        return rc;
    uint8_t n = q[0];
    if (n > 8)
        return -PICKLE_ELIMIT;
    if ((rc = take(k, n, &q)) < 0)
        return rc;
    struct pk_val *v;
    if ((rc = push_new(k, PK_INT, &v)) < 0)
        return rc;
    uint64_t u = le(q, n);
    if (n && n < 8 && (q[n - 1] & 0x80))
        u |= ~0ull << (8 * n); /* sign-extend */
    v->i = (int64_t)u;
    return 0;
}

/* GLOBAL: "module\nname\n" (protocols 2/3). */
static int read_line(struct pk *k, uint32_t *idx)
{
    const uint8_t *nl = memchr(k->p, '\n', (size_t)(k->end - k->p));
    if (!nl)
        return -PICKLE_ETRUNC;
    int rc = new_val(k, PK_STR, idx);
    if (rc < 0)
        return rc;
    k->vals[*idx].p = k->p;
    k->vals[*idx].n = (uint32_t)(nl - k->p);
    k->p = nl + 1;
    return 0;
}

static int make_global(struct pk *k, uint32_t module, uint32_t name)
{
    struct pk_val *v;
    int rc = push_new(k, PK_GLOBAL, &v);
    if (rc == 0) {
        v->x = module;
        v->y = name;
    }
    return rc;
}

static bool str_is(const struct pk *k, uint32_t v, const char *lit)
{
    size_t n = strlen(lit);
    const struct pk_val *s = &k->vals[v];
    return s->type == PK_STR && s->n == n && memcmp(s->p, lit, n) == 0;
}

static bool global_is(const struct pk *k, uint32_t g, const char *module, const char *name)
{
    return k->vals[g].type == PK_GLOBAL && str_is(k, k->vals[g].x, module) &&
           str_is(k, k->vals[g].y, name);
}

/* The wrapper classes, by name, under any lmcache. module. */
static int wrapper_kind(const struct pk *k, uint32_t g)
{
    static const char *const names[] = { [PICKLE_CUDA_IPC] = "CudaIPCWrapper",
                                          [PICKLE_RAW_CUDA] = "RawCudaIPCWrapper",
                                          [PICKLE_DEVICE_IPC] = "DeviceIPCWrapper" };
    const struct pk_val *mod = &k->vals[k->vals[g].x];
    if (k->vals[g].type != PK_GLOBAL || mod->type != PK_STR || mod->n < 9 ||
        memcmp(mod->p, "lmcache.", 8) != 0)
        return -PICKLE_ECLASS;
    for (int j = 0; j < 3; j++)
        if (str_is(k, k->vals[g].y, names[j]))
            return j;
    return -PICKLE_ECLASS;
}

static int newobj(struct pk *k)
{
    uint32_t args, cls;
    int rc = pop_type(k, PK_TUPLE, &args);
    if (rc == 0)
        rc = pop_type(k, PK_GLOBAL, &cls);
    if (rc < 0)
        return rc;
    if (k->vals[args].y != 0)
        return -PICKLE_ECALL;
    if ((rc = wrapper_kind(k, cls)) < 0)
        return rc;
    struct pk_val *v;
    if ((rc = push_new(k, PK_OBJ, &v)) == 0) {
        v->x = cls;
        v->y = NIL;
    }
    return rc;
}

static int build(struct pk *k)
{
    uint32_t state, obj;
    int rc = pop(k, &state);
    if (rc == 0)
        rc = pop_type(k, PK_OBJ, &obj);
    if (rc < 0)
        return rc;
    if (k->vals[obj].y != NIL)
        return -PICKLE_ESTACK;
    k->vals[obj].y = state;
    return push(k, obj);
}

/* Protocol 2 bytes: _codecs.encode(text, "latin1"), or bytes() for b"". */
static int reduce(struct pk *k)
{
    uint32_t args, fn;
    int rc = pop_type(k, PK_TUPLE, &args);
    if (rc == 0)
        rc = pop_type(k, PK_GLOBAL, &fn);
    if (rc < 0)
        return rc;
    const struct pk_val *a = &k->vals[args];
    struct pk_val *v;
    if ((global_is(k, fn, "__builtin__", "bytes") || global_is(k, fn, "builtins", "bytes")) &&
        a->y == 0) {
        if ((rc = push_new(k, PK_BYTES, &v)) == 0)
            v->p = (const uint8_t *)"";
        return rc;
    }
    if (!global_is(k, fn, "_codecs", "encode") || a->y != 2 ||
        k->vals[k->kids[a->x]].type != PK_STR || !str_is(k, k->kids[a->x + 1], "latin1"))
        return -PICKLE_ECALL;
    /* UTF-8 text of code points < 256 -> one byte each */
    const struct pk_val *text = &k->vals[k->kids[a->x]];
    struct pickle_ipc *o = k->out;
    uint8_t *dst = o->store_ + o->store_used_;
    size_t n = 0;
    for (uint32_t j = 0; j < text->n; j++) {
        uint8_t c = text->p[j];
        if (c >= 0x80) {
            if ((c & 0xfe) != 0xc2 || j + 1 >= text->n || (text->p[j + 1] & 0xc0) != 0x80)
                return -PICKLE_ECALL;
            c = (uint8_t)(((c & 0x03) << 6) | (text->p[++j] & 0x3f));
        }
        if (o->store_used_ + n >= PICKLE_LATIN1_STORE)
            return -PICKLE_ELIMIT;
        dst[n++] = c;
    }
    o->store_used_ += n;
    if ((rc = push_new(k, PK_BYTES, &v)) == 0) {
        v->p = dst;
        v->n = (uint32_t)n;
    }
    return rc;
}

static int memo_put(struct pk *k, uint64_t at)
{
    if (k->sp == 0 || k->stack[k->sp - 1] == MARK_ENTRY)
        return -PICKLE_ESTACK;
    if (at >= PICKLE_MAX_MEMO)
        return -PICKLE_ELIMIT;
    k->memo[at] = k->stack[k->sp - 1];
    return 0;
}

static int memo_get(struct pk *k, int width)
{
    const uint8_t *q;
    int rc = take(k, (size_t)width, &q);
    if (rc < 0)
        return rc;
    uint64_t at = le(q, width);
    if (at >= PICKLE_MAX_MEMO || k->memo[at] == NIL)
        return -PICKLE_ESTACK;
    return push(k, k->memo[at]);
}

static int memo_put_arg(struct pk *k, int width)
{
    const uint8_t *q;
    int rc = take(k, (size_t)width, &q);
    return rc < 0 ? rc : memo_put(k, le(q, width));
}

static int simple(struct pk *k, uint8_t type, bool b)
{
    struct pk_val *v;
    int rc = push_new(k, type, &v);
    if (rc == 0)
        v->b = b;
    return rc;
}

/* One opcode. Returns 1 at STOP. */
static int step(struct pk *k)
{
    const uint8_t *q;
    uint32_t a, b, mark;
    int rc = take(k, 1, &q);
    if (rc < 0)
        return -PICKLE_ENOSTOP; /* ran out between opcodes */
    switch (q[0]) {
    case 0x80: /* PROTO */
        if ((rc = take(k, 1, &q)) < 0)
            return rc;
        return q[0] >= 2 && q[0] <= 5 ? 0 : -PICKLE_EPROTO;
    case 0x95: return take(k, 8, &q); /* FRAME: framing is only a hint */
    case '.': return 1;               /* STOP */
    case '(': return push(k, MARK_ENTRY);
    case ')': return make_tuple(k, 0);
    case 0x85: return make_tuple(k, 1);
    case 0x86: return make_tuple(k, 2);
    case 0x87: return make_tuple(k, 3);
    case 't': /* TUPLE */
        if ((rc = find_mark(k, &mark)) < 0)
            return rc;
        a = k->sp - mark - 1;
        memmove(&k->stack[mark], &k->stack[mark + 1], a * sizeof(uint32_t));
        k->sp--;
        return make_tuple(k, a);
    case '}': { /* EMPTY_DICT */
        struct pk_val *v;
        if ((rc = push_new(k, PK_DICT, &v)) == 0)
            v->x = v->y = NIL;
        return rc;
    }
    case 'u': return set_items(k);
    case 's': /* SETITEM */
        if ((rc = pop(k, &b)) < 0 || (rc = pop(k, &a)) < 0)
            return rc;
        if (k->sp == 0 || k->stack[k->sp - 1] == MARK_ENTRY ||
            k->vals[k->stack[k->sp - 1]].type != PK_DICT)
            return -PICKLE_ESTACK;
        return dict_add(k, k->stack[k->sp - 1], a, b);
    case 0x8c: return read_str(k, PK_STR, 1);   /* SHORT_BINUNICODE */
    case 'X': return read_str(k, PK_STR, 4);    /* BINUNICODE */
    case 'C': return read_str(k, PK_BYTES, 1);  /* SHORT_BINBYTES */
    case 'B': return read_str(k, PK_BYTES, 4);  /* BINBYTES */
    case 'K': return read_int(k, 1, false);     /* BININT1 */
    case 'M': return read_int(k, 2, false);     /* BININT2 */
    case 'J': return read_int(k, 4, true);      /* BININT */
    case 0x8a: return read_long1(k);            /* LONG1 */
    case 0x88: return simple(k, PK_BOOL, true); /* NEWTRUE */
    case 0x89: return simple(k, PK_BOOL, false);
    case 'N': return simple(k, PK_NONE, false);
    case 0x94: /* MEMOIZE */
        if ((rc = memo_put(k, k->n_memo)) == 0)
            k->n_memo++;
        return rc;
    case 'q': return memo_put_arg(k, 1); /* BINPUT */
    case 'r': return memo_put_arg(k, 4); /* LONG_BINPUT */
    case 'h': return memo_get(k, 1);     /* BINGET */
    case 'j': return memo_get(k, 4);     /* LONG_BINGET */
    case 0x93:                           /* STACK_GLOBAL */
        if ((rc = pop_type(k, PK_STR, &b)) < 0 || (rc = pop_type(k, PK_STR, &a)) < 0)
            return rc;
        return make_global(k, a, b);
    case 'c': /* GLOBAL */
        if ((rc = read_line(k, &a)) < 0 || (rc = read_line(k, &b)) < 0)
            return rc;
        return make_global(k, a, b);
    case 0x81: return newobj(k);
    case 'b': return build(k);
    case 'R': return reduce(k);
    default: return -PICKLE_EOPCODE;
    }
}

/* ---- extraction ---------------------------------------------------------- */

static int get_int(const struct pk *k, uint32_t v, int64_t *out)
{
    if (k->vals[v].type != PK_INT)
        return -PICKLE_EFIELD;
    *out = k->vals[v].i;
    return 0;
}

static int get_view(const struct pk *k, uint32_t v, uint8_t type, const uint8_t **p, uint32_t *n)
{
    if (k->vals[v].type != type)
        return -PICKLE_EFIELD;
    *p = k->vals[v].p;
    *n = k->vals[v].n;
    return 0;
}

static int get_bytes(const struct pk *k, uint32_t v, struct wire_bin *out)
{
    return get_view(k, v, PK_BYTES, &out->ptr, &out->len);
}

static int get_str(const struct pk *k, uint32_t v, struct wire_str *out)
{
    const uint8_t *p = NULL;
    int rc = get_view(k, v, PK_STR, &p, &out->len);
    out->ptr = (const char *)p;
    return rc;
}

static int get_ints(const struct pk *k, uint32_t v, int64_t *dst, uint32_t *n)
{
    const struct pk_val *t = &k->vals[v];
    if (t->type != PK_TUPLE)
        return -PICKLE_EFIELD;
    if (t->y > PICKLE_MAX_DIMS)
        return -PICKLE_ELIMIT;
    *n = t->y;
    for (uint32_t j = 0; j < t->y; j++)
        if (get_int(k, k->kids[t->x + j], &dst[j]) < 0)
            return -PICKLE_EFIELD;
    return 0;
}

static int get_handle(const struct pk *k, uint32_t v, struct pickle_ipc *o)
{
    const struct pk_val *t = &k->vals[v];
    if (t->type == PK_NONE)
        return 0;
    if (t->type != PK_TUPLE || t->y != 8)
        return -PICKLE_EFIELD;
    const uint32_t *e = &k->kids[t->x];
    o->has_handle = true;
    int rc = get_int(k, e[0], &o->device_index);
    if (rc == 0) rc = get_bytes(k, e[1], &o->storage_handle);
    if (rc == 0) rc = get_int(k, e[2], &o->storage_size_bytes);
    if (rc == 0) rc = get_int(k, e[3], &o->storage_offset_bytes);
    if (rc == 0) rc = get_bytes(k, e[4], &o->ref_counter_handle);
    if (rc == 0) rc = get_int(k, e[5], &o->ref_counter_offset);
    if (rc == 0) rc = get_bytes(k, e[6], &o->event_handle);
    if (rc == 0 && k->vals[e[7]].type != PK_BOOL)
        rc = -PICKLE_EFIELD;
    o->event_sync_required = k->vals[e[7]].b;
    return rc;
}

enum { F_HANDLE, F_DTYPE, F_SHAPE, F_STRIDE, F_OFFSET, F_UUID, F_RESERVED, F_NBYTES, F_COUNT };

static int state_field(const struct pk *k, int f, uint32_t v, struct pickle_ipc *o)
{
    switch (f) {
    case F_HANDLE: return get_handle(k, v, o);
    case F_DTYPE:
        if (k->vals[v].type != PK_GLOBAL || !str_is(k, k->vals[v].x, "torch"))
            return -PICKLE_EFIELD;
        return get_str(k, k->vals[v].y, &o->dtype);
    case F_SHAPE: return get_ints(k, v, o->shape, &o->ndim);
    case F_STRIDE: return get_ints(k, v, o->stride, &o->nstride);
    case F_OFFSET: return get_int(k, v, &o->storage_offset);
    case F_UUID: return get_str(k, v, &o->device_uuid);
    case F_RESERVED:
        o->has_ipc_handle_reserved = true;
        return get_bytes(k, v, &o->ipc_handle_reserved);
    default:
        o->has_nbytes = true;
        return get_int(k, v, &o->nbytes);
    }
}

static int extract(const struct pk *k, uint32_t obj, struct pickle_ipc *o)
{
    static const char *const keys[F_COUNT] = { "handle", "dtype", "shape", "stride",
                                               "storage_offset", "device_uuid",
                                               "_ipc_handle_reserved", "_nbytes" };
    const struct pk_val *ov = &k->vals[obj];
    if (ov->type != PK_OBJ)
        return -PICKLE_ECLASS;
    o->kind = (enum pickle_wrapper)wrapper_kind(k, ov->x);
    get_str(k, k->vals[ov->x].x, &o->module);
    get_str(k, k->vals[ov->x].y, &o->cls);
    if (ov->y == NIL || k->vals[ov->y].type != PK_DICT)
        return -PICKLE_EFIELD;
    unsigned seen = 0;
    for (uint32_t j = k->vals[ov->y].x; j != NIL; j = k->pairs[j].next) {
        for (int f = 0; f < F_COUNT; f++) {
            if (!str_is(k, k->pairs[j].key, keys[f]))
                continue;
            int rc = state_field(k, f, k->pairs[j].val, o);
            if (rc < 0)
                return rc;
            seen |= 1u << f;
        }
    }
    unsigned need = (1u << F_HANDLE) | (1u << F_DTYPE) | (1u << F_SHAPE) | (1u << F_STRIDE) |
                    (1u << F_OFFSET) | (1u << F_UUID);
    if (o->kind == PICKLE_RAW_CUDA)
        need |= (1u << F_RESERVED) | (1u << F_NBYTES);
    if ((seen & need) != need)
        return -PICKLE_EFIELD;
    if (o->kind == PICKLE_CUDA_IPC && !o->has_handle)
        return -PICKLE_EFIELD;
    return 0;
}

int pickle_parse_ipc(const void *data, size_t len, struct pickle_ipc *out)
{
    memset(out, 0, sizeof(*out));
    struct pk *k = malloc(sizeof(*k));
    if (!k)
        return -ENOMEM;
    k->p = data;
    k->end = k->p + len;
    k->out = out;
    k->n_vals = k->n_kids = k->n_pairs = k->sp = k->n_memo = 0;
    for (uint32_t j = 0; j < PICKLE_MAX_MEMO; j++)
        k->memo[j] = NIL;
    int rc;
    while ((rc = step(k)) == 0)
        ;
    if (rc == 1) {
        uint32_t top;
        if (k->p != k->end)
            rc = -PICKLE_ENOSTOP;
        else if (k->sp != 1 || (rc = pop(k, &top)) < 0)
            rc = -PICKLE_ESTACK;
        else
            rc = extract(k, top, out);
    }
    free(k);
    if (rc < 0) {
        memset(out, 0, sizeof(*out));
        return rc;
    }
    return 0;
}
