/*
 * Plugin output lines: bytes from a pipe -> bounded, printable log lines.
 *
 * LMCache decodes strictly (one bad byte kills its reader thread and later
 * blocks the plugin) and has no line limit. Here every byte sequence is
 * accepted: valid UTF-8 is kept, anything else is escaped, and a line is cut
 * into pieces of at most PLUGIN_LINE_MAX bytes on character boundaries.
 * The state survives between reads, so a character or "\r\n" split across
 * two reads is handled.
 */
#include <stdio.h>
#include <string.h>

#include "plugin/plugin_int.h"

void plugin_lines_init(struct plugin_lines *lb) { memset(lb, 0, sizeof(*lb)); }

static void emit(struct plugin_lines *lb, unsigned flags, plugin_line_fn fn, void *ctx)
{
    if (lb->cont)
        flags |= PLUGIN_LINE_CONT;
    fn(ctx, lb->out, lb->len, flags);
    lb->len = 0;
    lb->cont = (flags & PLUGIN_LINE_CUT) != 0;
}

/* Appends one whole character (or escape); cuts the line first if it would
 * not fit, so a piece never ends inside a character. */
static void put(struct plugin_lines *lb, const char *s, size_t n, plugin_line_fn fn, void *ctx)
{
    if (lb->len + n > PLUGIN_LINE_MAX)
        emit(lb, PLUGIN_LINE_CUT, fn, ctx);
    memcpy(lb->out + lb->len, s, n);
    lb->len += n;
}

static void put_escape(struct plugin_lines *lb, unsigned char c, bool c1, plugin_line_fn fn,
                       void *ctx)
{
    char e[8];
    int n = snprintf(e, sizeof(e), c1 ? "\\u%04x" : "\\x%02x", c);
    put(lb, e, (size_t)n, fn, ctx);
}

/* An unfinished multi-byte sequence is invalid: escape its bytes. */
static void flush_pending(struct plugin_lines *lb, plugin_line_fn fn, void *ctx)
{
    for (unsigned i = 0; i < lb->npend; i++)
        put_escape(lb, lb->pend[i], false, fn, ctx);
    lb->npend = lb->need = 0;
}

static void end_line(struct plugin_lines *lb, plugin_line_fn fn, void *ctx)
{
    flush_pending(lb, fn, ctx);
    while (lb->len > 0 && (lb->out[lb->len - 1] == ' ' || lb->out[lb->len - 1] == '\t'))
        lb->len--;
    emit(lb, 0, fn, ctx);
    lb->cont = false;
    lb->seen = 0;
}

/* Whether c may follow lead as the second byte of a well-formed sequence
 * (no overlongs, no surrogates, nothing above U+10FFFF). */
static bool second_ok(unsigned char lead, unsigned char c)
{
    switch (lead) {
    case 0xE0: return c >= 0xA0 && c <= 0xBF;
    case 0xED: return c >= 0x80 && c <= 0x9F;
    case 0xF0: return c >= 0x90 && c <= 0xBF;
    case 0xF4: return c >= 0x80 && c <= 0x8F;
    default: return (c & 0xC0) == 0x80;
    }
}

static void complete_seq(struct plugin_lines *lb, plugin_line_fn fn, void *ctx)
{
    /* U+0080..U+009F (C1 controls) are C2 80..C2 9F */
    if (lb->need == 2 && lb->pend[0] == 0xC2 && lb->pend[1] <= 0x9F)
        put_escape(lb, lb->pend[1], true, fn, ctx);
    else
        put(lb, (const char *)lb->pend, lb->need, fn, ctx);
    lb->npend = lb->need = 0;
}

static void byte_ascii(struct plugin_lines *lb, unsigned char c, plugin_line_fn fn, void *ctx)
{
    if (c == ' ' || c == '\t' || c == '\v' || c == '\f') {
        if (lb->len == 0 && !lb->cont)
            return; /* leading blanks are stripped, as LMCache does */
        char b = c == '\t' ? '\t' : ' ';
        put(lb, &b, 1, fn, ctx);
    } else if (c < 0x20 || c == 0x7F) {
        put_escape(lb, c, false, fn, ctx);
    } else {
        char b = (char)c;
        put(lb, &b, 1, fn, ctx);
    }
}

void plugin_lines_feed(struct plugin_lines *lb, const char *p, size_t n, plugin_line_fn fn,
                       void *ctx)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (lb->npend) {
            bool ok = lb->npend == 1 ? second_ok(lb->pend[0], c) : (c & 0xC0) == 0x80;
            if (ok) {
                lb->pend[lb->npend++] = c;
                lb->seen++;
                if (lb->npend == lb->need)
                    complete_seq(lb, fn, ctx);
                continue;
            }
            flush_pending(lb, fn, ctx); /* then c starts afresh */
        }
        if (lb->after_cr) {
            lb->after_cr = false;
            if (c == '\n')
                continue;
        }
        if (c == '\n' || c == '\r') {
            end_line(lb, fn, ctx);
            lb->after_cr = c == '\r';
            continue;
        }
        lb->seen++;
        if (c < 0x80) {
            byte_ascii(lb, c, fn, ctx);
        } else if (c >= 0xC2 && c <= 0xF4) {
            lb->pend[0] = c;
            lb->npend = 1;
            lb->need = c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        } else {
            put_escape(lb, c, false, fn, ctx);
        }
    }
}

void plugin_lines_flush(struct plugin_lines *lb, plugin_line_fn fn, void *ctx)
{
    if (lb->seen || lb->len || lb->npend || lb->cont)
        end_line(lb, fn, ctx);
    lb->after_cr = false;
}
