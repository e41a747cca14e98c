/*
 * pickle: the ext-1 device IPC descriptor reader against pickles produced by
 * Debian's /usr/bin/python3 (protocols 2-5), plus hand-made bad inputs.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/pickle.h"

/* Runs test_pickle_gen.py and returns the pickle bytes (malloc'd). */
static uint8_t *python_pickle(int proto, const char *variant, size_t *len)
{
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 tests/unit/test_pickle_gen.py %d %s", proto, variant);
    FILE *p = popen(cmd, "r");
    cr_assert(p, "popen %s", cmd);
    static char hex[65536];
    size_t n = fread(hex, 1, sizeof(hex) - 1, p);
    cr_assert_eq(pclose(p), 0, "%s failed", cmd);
    cr_assert(n > 0 && n % 2 == 0);
    uint8_t *out = malloc(n / 2);
    for (size_t k = 0; k < n / 2; k++) {
        unsigned v;
        cr_assert(sscanf(hex + 2 * k, "%2x", &v) == 1);
        out[k] = (uint8_t)v;
    }
    *len = n / 2;
    return out;
}

static bool str_is(struct wire_str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

static void check_cuda(const struct pickle_ipc *o)
{
    cr_assert_eq(o->kind, PICKLE_CUDA_IPC);
    cr_assert(str_is(o->module, "lmcache.v1.multiprocess.custom_types"));
    cr_assert(str_is(o->cls, "CudaIPCWrapper"));
    cr_assert(o->has_handle);
    cr_assert_eq(o->device_index, 1);
    cr_assert_eq(o->storage_handle.len, 66);
    cr_assert_eq(o->storage_handle.ptr[0], 2);
    cr_assert_eq(o->storage_handle.ptr[65], 63);
    cr_assert_eq(o->storage_size_bytes, 65536000);
    cr_assert_eq(o->storage_offset_bytes, 4096);
    cr_assert_eq(o->ref_counter_handle.len, 12);
    cr_assert_eq(o->ref_counter_offset, 0);
    cr_assert_eq(o->event_handle.len, 64);
    cr_assert_eq(o->event_handle.ptr[63], 163);
    cr_assert(o->event_sync_required);
    cr_assert(str_is(o->dtype, "bfloat16"));
    cr_assert_eq(o->ndim, 5);
    cr_assert_eq(o->shape[1], 1000);
    cr_assert_eq(o->shape[4], 128);
    cr_assert_eq(o->nstride, 5);
    cr_assert_eq(o->stride[0], 16384000);
    cr_assert_eq(o->storage_offset, 0);
    cr_assert(str_is(o->device_uuid, "8f0e2b1c-1d2e-4f5a-9b6c-7d8e9fa0b1c2"));
    cr_assert(!o->has_ipc_handle_reserved);
}

Test(pickle, cuda_wrapper_every_protocol)
{
    for (int proto = 2; proto <= 5; proto++) {
        size_t len;
        uint8_t *b = python_pickle(proto, "cuda", &len);
        struct pickle_ipc o;
        int rc = pickle_parse_ipc(b, len, &o);
        cr_assert_eq(rc, 0, "protocol %d: %s", proto, pickle_strerror(rc));
        check_cuda(&o);
        free(b);
    }
}

Test(pickle, raw_device_big_and_recurring_variants)
{
    for (int proto = 2; proto <= 5; proto++) {
        size_t len;
        struct pickle_ipc o;
        uint8_t *b = python_pickle(proto, "raw", &len);
        cr_assert_eq(pickle_parse_ipc(b, len, &o), 0, "raw, protocol %d", proto);
        cr_assert_eq(o.kind, PICKLE_RAW_CUDA);
        cr_assert(!o.has_handle);
        cr_assert(o.has_ipc_handle_reserved && o.ipc_handle_reserved.len == 64);
        cr_assert_eq(o.ipc_handle_reserved.ptr[63], 63);
        cr_assert(o.has_nbytes && o.nbytes == 123456);
        free(b);

        b = python_pickle(proto, "device", &len);
        cr_assert_eq(pickle_parse_ipc(b, len, &o), 0, "device, protocol %d", proto);
        cr_assert_eq(o.kind, PICKLE_DEVICE_IPC);
        cr_assert(str_is(o.module, "lmcache.v1.platform.base.ipc_wrapper"));
        free(b);

        b = python_pickle(proto, "big", &len);
        cr_assert_eq(pickle_parse_ipc(b, len, &o), 0, "big, protocol %d", proto);
        cr_assert_eq(o.storage_size_bytes, 1ll << 33); /* LONG1 */
        cr_assert_eq(o.storage_offset, 3000000000ll);
        cr_assert(str_is(o.dtype, "uint8"));
        cr_assert_eq(o.ndim, 1);
        free(b);

        b = python_pickle(proto, "recurring", &len);
        cr_assert_eq(pickle_parse_ipc(b, len, &o), 0, "recurring, protocol %d", proto);
        cr_assert_eq(o.nstride, 5);
        cr_assert_eq(o.stride[4], 128); /* BINGET of the shape tuple */
        free(b);
    }
}

Test(pickle, unknown_globals_and_opcodes_are_rejected)
{
    for (int proto = 2; proto <= 5; proto++) {
        size_t len;
        struct pickle_ipc o;
        uint8_t *b = python_pickle(proto, "evil", &len);
        int rc = pickle_parse_ipc(b, len, &o);
        /* a state value built by REDUCE of builtins.print */
        cr_assert_eq(rc, -PICKLE_ECALL, "protocol %d: %s", proto, pickle_strerror(rc));
        free(b);
    }
    /* os.system("x") via GLOBAL + REDUCE */
    static const char evil[] = "\x80\x02\x63os\nsystem\nX\x01\x00\x00\x00x\x85R.";
    struct pickle_ipc o;
    cr_assert_eq(pickle_parse_ipc(evil, sizeof(evil) - 1, &o), -PICKLE_ECALL);
    /* INST, OBJ, EXT1, PERSID, BINFLOAT, LIST are outside the set */
    static const uint8_t ops[] = { 'i', 'o', 0x82, 'P', 'G', ']', 'I', 'S', 'V', 0x8d, 0x96 };
    for (size_t k = 0; k < sizeof(ops); k++) {
        uint8_t p[4] = { 0x80, 0x04, ops[k], '.' };
        cr_assert_eq(pickle_parse_ipc(p, 4, &o), -PICKLE_EOPCODE, "opcode %02x", ops[k]);
    }
    static const uint8_t proto1[] = { 0x80, 0x01, 'N', '.' };
    cr_assert_eq(pickle_parse_ipc(proto1, 4, &o), -PICKLE_EPROTO);
}

Test(pickle, wrong_class_and_shape_errors)
{
    struct pickle_ipc o;
    /* NEWOBJ of a non-lmcache class */
    static const char other[] =
        "\x80\x04\x8c\x04main\x8c\x0e" "CudaIPCWrapper\x93)\x81}b.";
    cr_assert_eq(pickle_parse_ipc(other, sizeof(other) - 1, &o), -PICKLE_ECLASS);
    /* the right class with an empty state */
    static const char empty[] =
        "\x80\x04\x8c\x0blmcache.foo\x8c\x0e" "CudaIPCWrapper\x93)\x81}b.";
    cr_assert_eq(pickle_parse_ipc(empty, sizeof(empty) - 1, &o), -PICKLE_EFIELD);
    /* a bare None is not a wrapper */
    cr_assert_eq(pickle_parse_ipc("\x80\x04N.", 4, &o), -PICKLE_ECLASS);
    /* stack underflow, missing STOP, trailing bytes, truncation */
    cr_assert_eq(pickle_parse_ipc("\x80\x04t.", 4, &o), -PICKLE_ESTACK);
    cr_assert_eq(pickle_parse_ipc("\x80\x04N", 3, &o), -PICKLE_ENOSTOP);
    cr_assert_eq(pickle_parse_ipc("\x80\x04N.N", 5, &o), -PICKLE_ENOSTOP);
    cr_assert_eq(pickle_parse_ipc("\x80\x04X\xff\xff\xff\xff", 7, &o), -PICKLE_ETRUNC);
    cr_assert_eq(pickle_parse_ipc("\x80\x04N\x94h\x05.", 7, &o), -PICKLE_ESTACK);
    cr_assert_eq(pickle_parse_ipc("\x80\x04Nr\x00\x10\x00\x00.", 9, &o), -PICKLE_ELIMIT);
    /* stack depth bound */
    uint8_t deep[2 + PICKLE_MAX_STACK + 2];
    deep[0] = 0x80;
    deep[1] = 0x04;
    memset(deep + 2, '(', PICKLE_MAX_STACK + 1);
    deep[sizeof(deep) - 1] = '.';
    cr_assert_eq(pickle_parse_ipc(deep, sizeof(deep), &o), -PICKLE_ELIMIT);
    cr_assert_str_neq(pickle_strerror(-PICKLE_EOPCODE), pickle_strerror(-PICKLE_ECALL));
}
