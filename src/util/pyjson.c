#include "util/pyjson.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct sbuf {
    char *p;
    size_t len, cap;
    int oom;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void sb_puts(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

size_t pyjson_format_double(double d, char *buf, size_t cap)
{
    if (isnan(d))
        return (size_t)snprintf(buf, cap, "NaN");
    if (isinf(d))
        return (size_t)snprintf(buf, cap, d < 0 ? "-Infinity" : "Infinity");
    /* Shortest digit string that parses back to d (Python's repr contract). */
    char tmp[40];
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof(tmp), "%.*e", prec - 1, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    /* tmp = [-]D[.DDD]e[+-]XX: split into digits and decimal exponent. */
    char digits[24];
    size_t nd = 0;
    const char *s = tmp;
    int neg = 0;
    if (*s == '-') {
        neg = 1;
        s++;
    }
    for (; *s && *s != 'e'; s++)
        if (*s >= '0' && *s <= '9')
            digits[nd++] = *s;
    int exp10 = atoi(s + 1);
    while (nd > 1 && digits[nd - 1] == '0')
        nd--;
    digits[nd] = 0;
    size_t o = 0;
    char out[64];
    if (neg)
        out[o++] = '-';
    if (exp10 < -4 || exp10 >= 16) {
        out[o++] = digits[0];
        if (nd > 1) {
            out[o++] = '.';
            memcpy(out + o, digits + 1, nd - 1);
            o += nd - 1;
        }
        o += (size_t)snprintf(out + o, sizeof(out) - o, "e%c%02d", exp10 < 0 ? '-' : '+',
                              exp10 < 0 ? -exp10 : exp10);
    } else if (exp10 < 0) {
        out[o++] = '0';
        out[o++] = '.';
        for (int i = -1; i > exp10; i--)
            out[o++] = '0';
        memcpy(out + o, digits, nd);
        o += nd;
    } else {
        size_t int_len = (size_t)exp10 + 1;
        for (size_t i = 0; i < int_len; i++)
            out[o++] = i < nd ? digits[i] : '0';
        out[o++] = '.';
        if (nd > int_len) {
            memcpy(out + o, digits + int_len, nd - int_len);
            o += nd - int_len;
        } else {
            out[o++] = '0';
        }
    }
    out[o] = 0;
    return (size_t)snprintf(buf, cap, "%s", out);
}

/* Decodes one UTF-8 sequence; invalid bytes come back as U+FFFD, 1 byte. */
static unsigned utf8_next(const unsigned char *s, size_t n, size_t *adv)
{
    unsigned c = s[0];
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || len > n) {
        *adv = 1;
        return 0xFFFD;
    }
    unsigned cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *adv = 1;
            return 0xFFFD;
        }
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    *adv = len;
    return cp;
}

static void put_string(struct sbuf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    char esc[16];
    sb_put(b, "\"", 1);
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c >= 0x20 && c < 0x7F && c != '"' && c != '\\') {
            size_t j = i;
            while (j < n && s[j] >= 0x20 && s[j] < 0x7F && s[j] != '"' && s[j] != '\\')
                j++;
            sb_put(b, str + i, j - i);
            i = j;
            continue;
        }
        size_t adv = 1;
        switch (c) {
        case '"': sb_puts(b, "\\\""); break;
        case '\\': sb_puts(b, "\\\\"); break;
        case '\n': sb_puts(b, "\\n"); break;
        case '\r': sb_puts(b, "\\r"); break;
        case '\t': sb_puts(b, "\\t"); break;
        case '\b': sb_puts(b, "\\b"); break;
        case '\f': sb_puts(b, "\\f"); break;
        default: {
            unsigned cp = c < 0x80 ? c : utf8_next(s + i, n - i, &adv);
            if (cp >= 0x10000) {
                cp -= 0x10000;
                snprintf(esc, sizeof(esc), "\\u%04x\\u%04x", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
            } else {
                snprintf(esc, sizeof(esc), "\\u%04x", cp);
            }
            sb_puts(b, esc);
        }
        }
        i += adv;
    }
    sb_put(b, "\"", 1);
}

static void newline(struct sbuf *b, int indent, int depth)
{
    if (indent < 0)
        return;
    sb_put(b, "\n", 1);
    for (int i = 0; i < indent * depth; i++)
        sb_put(b, " ", 1);
}

static void dump(struct sbuf *b, const json_t *v, int indent, int depth)
{
    char num[64];
    const char *item_sep = indent < 0 ? ", " : ",";
    switch (json_typeof(v)) {
    case JSON_NULL: sb_puts(b, "null"); break;
    case JSON_TRUE: sb_puts(b, "true"); break;
    case JSON_FALSE: sb_puts(b, "false"); break;
    case JSON_INTEGER:
        snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT, json_integer_value(v));
        sb_puts(b, num);
        break;
    case JSON_REAL:
        pyjson_format_double(json_real_value(v), num, sizeof(num));
        sb_puts(b, num);
        break;
    case JSON_STRING: put_string(b, json_string_value(v), json_string_length(v)); break;
    case JSON_ARRAY: {
        size_t n = json_array_size(v);
        if (n == 0) {
            sb_puts(b, "[]");
            break;
        }
        sb_put(b, "[", 1);
        for (size_t i = 0; i < n; i++) {
            if (i)
                sb_puts(b, item_sep);
            newline(b, indent, depth + 1);
            dump(b, json_array_get(v, i), indent, depth + 1);
        }
        newline(b, indent, depth);
        sb_put(b, "]", 1);
        break;
    }
    case JSON_OBJECT: {
        if (json_object_size(v) == 0) {
            sb_puts(b, "{}");
            break;
        }
        sb_put(b, "{", 1);
        const char *key;
        json_t *val;
        int first = 1;
        json_object_foreach((json_t *)v, key, val) {
            if (!first)
                sb_puts(b, item_sep);
            first = 0;
            newline(b, indent, depth + 1);
            put_string(b, key, strlen(key));
            sb_puts(b, ": ");
            dump(b, val, indent, depth + 1);
        }
        newline(b, indent, depth);
        sb_put(b, "}", 1);
        break;
    }
    }
}

char *pyjson_dumps(const json_t *v, int indent)
{
    if (!v)
        return NULL;
    struct sbuf b = { 0 };
    dump(&b, v, indent, 0);
    if (b.oom) {
        free(b.p);
        return NULL;
    }
    if (!b.p)
        return strdup("");
    return b.p;
}
