/*
 * pyjson: serialise a jansson tree exactly as Python's json.dumps does with
 * its defaults (what LMCache hands to plugins and serves over HTTP):
 * separators ", " and ": " on one line (or "," and ": " with an indent),
 * non-ASCII escaped as \uXXXX (surrogate pairs above U+FFFF), and floats in
 * Python's shortest round-trip repr (0.8, 120.0, 1e-05, 1e+16, NaN,
 * Infinity). Keys keep jansson's insertion order.
 *
 * Pure functions; any thread.
 */
#ifndef LMCD_UTIL_PYJSON_H
#define LMCD_UTIL_PYJSON_H

#include <jansson.h>
#include <stddef.h>

/* indent < 0: one line; indent >= 0: Python's json.dumps(indent=N).
 * Returns a malloc'd NUL-terminated string, or NULL for a NULL tree or on
 * allocation failure. Strings need not be valid UTF-8 (json_string_nocheck):
 * invalid bytes are written as \ufffd. */
char *pyjson_dumps(const json_t *v, int indent);

/* Writes Python's repr(float(d)) into buf (at least 32 bytes). Returns length. */
size_t pyjson_format_double(double d, char *buf, size_t cap);

#endif
