/*
 * profile: the registry of profile tables, names of ops/classes/errors, and
 * the `--protocol help` text. A new profile is a new profile_<name>.c plus
 * one line in `registry` below.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "wire/proto.h"

static const struct wire_profile_def *const registry[WIRE_PROFILE_COUNT] = {
    [WIRE_PROFILE_2604] = &wire_profile_2604,
    [WIRE_PROFILE_2609] = &wire_profile_2609,
};

const struct wire_profile_def *wire_profile_get(enum wire_profile p)
{
    return (unsigned)p < WIRE_PROFILE_COUNT ? registry[p] : NULL;
}

int wire_profile_parse(const char *name, enum wire_profile *out)
{
    for (unsigned k = 0; name && k < WIRE_PROFILE_COUNT; k++)
        if (strcmp(registry[k]->name, name) == 0) {
            *out = registry[k]->id;
            return 0;
        }
    return -EINVAL;
}

const char *wire_profile_name(enum wire_profile p)
{
    const struct wire_profile_def *pd = wire_profile_get(p);
    return pd ? pd->name : "?";
}

#define WIRE_OP_NAME_(sym, name) name,
static const char *const op_names[WIRE_OP_COUNT] = { WIRE_OPS(WIRE_OP_NAME_) };
#undef WIRE_OP_NAME_

const char *wire_op_name(enum wire_op op)
{
    return (unsigned)op < WIRE_OP_COUNT ? op_names[op] : "?";
}

bool wire_op_unserved(enum wire_op op)
{
    return op >= WIRE_OP_UNSERVED_CACHEBLEND && op < WIRE_OP_COUNT;
}

const char *wire_class_name(enum wire_class c)
{
    switch (c) {
    case WIRE_CLASS_SYNC: return "sync";
    case WIRE_CLASS_AFFINITY: return "affinity";
    case WIRE_CLASS_NORMAL: return "normal";
    }
    return "?";
}

const char *wire_resp_kind_name(enum wire_resp_kind k)
{
    static const char *const names[] = {
        [WIRE_RESP_NONE] = "None",
        [WIRE_RESP_INT] = "int",
        [WIRE_RESP_INT_OR_NIL] = "int | None",
        [WIRE_RESP_BOOL] = "bool",
        [WIRE_RESP_STR] = "str",
        [WIRE_RESP_STR_LIST] = "[str]",
        [WIRE_RESP_EVENT_BOOL] = "[bin, bool]",
        [WIRE_RESP_ED_POOL] = "{shm_name, pool_size}",
        [WIRE_RESP_ED_CONTEXT] = "{context: {slots, chunk_indices}}",
        [WIRE_RESP_ED_RETRIEVE] = "{success, data, context}",
        [WIRE_RESP_INLINE] = "int (+ raw chunk frames)",
    };
    return (unsigned)k < sizeof(names) / sizeof(names[0]) ? names[k] : "?";
}

#define WIRE_ERR_MSG_(sym, val, msg) case WIRE_##sym: return msg;
const char *wire_strerror(int rc)
{
    if (rc == 0)
        return "success";
    switch (-rc) {
        WIRE_ERRORS(WIRE_ERR_MSG_)
    default: return strerror(-rc);
    }
}
#undef WIRE_ERR_MSG_

const struct wire_row *wire_row_by_id(const struct wire_profile_def *pd, int64_t id)
{
    for (size_t k = 0; id >= 0 && k < pd->n_rows; k++)
        if (pd->rows[k].id == id)
            return &pd->rows[k];
    return NULL;
}

const struct wire_row *wire_row_by_name(const struct wire_profile_def *pd, const char *s, size_t n)
{
    for (size_t k = 0; k < pd->n_rows; k++) {
        const char *name = pd->rows[k].name;
        if (strlen(name) == n && memcmp(name, s, n) == 0)
            return &pd->rows[k];
    }
    return NULL;
}

const struct wire_row *wire_row_by_op(const struct wire_profile_def *pd, enum wire_op op)
{
    if (op == WIRE_OP_NONE || wire_op_unserved(op))
        return NULL;
    for (size_t k = 0; k < pd->n_rows; k++)
        if (pd->rows[k].op == op)
            return &pd->rows[k];
    return NULL;
}

enum wire_resp_kind wire_op_resp_kind(enum wire_op op)
{
    for (unsigned p = 0; p < WIRE_PROFILE_COUNT; p++) {
        const struct wire_row *row = wire_row_by_op(registry[p], op);
        if (row)
            return row->resp;
    }
    return WIRE_RESP_NONE;
}

/* "a:int, b:str, [c:map, d:[int]]": parameters from `min` on are optional. */
static void help_params(FILE *out, const uint8_t *p, unsigned min)
{
    unsigned k = 0;
    for (; k < WIRE_MAX_PARAMS && p[k] != P_END; k++)
        fprintf(out, "%s%s%s", k ? ", " : "", k == min ? "[" : "", wire_param_info(p[k])->help);
    fputs(k == 0 ? "(none)" : k > min ? "]" : "", out);
}

void wire_protocol_help(FILE *out)
{
    fputs("Protocol profiles (--protocol NAME):\n", out);
    for (unsigned p = 0; p < WIRE_PROFILE_COUNT; p++) {
        const struct wire_profile_def *pd = registry[p];
        fprintf(out, "\n%s\n  %s\n", pd->name, pd->summary);
        for (size_t k = 0; k < pd->n_rows; k++) {
            const struct wire_row *r = &pd->rows[k];
            char id[16];
            snprintf(id, sizeof(id), r->id >= 0 ? "%d" : "-", (int)r->id);
            fprintf(out, "  %3s  %-42s ", id, r->name);
            if (wire_op_unserved(r->op)) {
                fprintf(out, "not served (%s): logged, no reply\n", wire_op_name(r->op));
                continue;
            }
            fprintf(out, "%-8s ", wire_class_name(r->cls));
            help_params(out, r->p, r->min);
            if (r->alt_n) {
                fputs(" | ", out);
                help_params(out, r->alt, r->alt_n);
            }
            if (r->flags & ROW_RAW_TAIL)
                fputs(", raw chunk frames...", out);
            fprintf(out, " -> %s\n", wire_resp_kind_name(r->resp));
        }
    }
}

/* ---- owned allocations ------------------------------------------------- */

struct wire_alloc {
    struct wire_alloc *next;
    max_align_t data[];
};

void *wire_own(struct wire_alloc **list, size_t n, size_t size)
{
    if (n && size > (SIZE_MAX - sizeof(struct wire_alloc)) / n)
        return NULL;
    struct wire_alloc *a = calloc(1, sizeof(*a) + n * size);
    if (!a)
        return NULL;
    a->next = *list;
    *list = a;
    return a->data;
}

void *wire_own_uninit(struct wire_alloc **list, size_t n, size_t size)
{
    if (n && size > (SIZE_MAX - sizeof(struct wire_alloc)) / n)
        return NULL;
    struct wire_alloc *a = malloc(sizeof(*a) + n * size);
    if (!a)
        return NULL;
    a->next = *list;
    *list = a;
    return a->data;
}

void wire_own_free(struct wire_alloc **list)
{
    while (*list) {
        struct wire_alloc *next = (*list)->next;
        free(*list);
        *list = next;
    }
}
