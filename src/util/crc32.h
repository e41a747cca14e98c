/*
 * crc32: the CRC-32 of zlib, PNG and Ethernet (reflected polynomial
 * 0xEDB88320, init and final xor 0xFFFFFFFF; Python's zlib.crc32), so a
 * checksum lmcd writes can be checked with one line of Python.
 * Slice-by-8 tables, built once; any thread.
 */
#ifndef LMCD_UTIL_CRC32_H
#define LMCD_UTIL_CRC32_H

#include <stddef.h>
#include <stdint.h>

/* crc32(0, NULL, 0) == 0; continue with crc32(prev, more, n). */
uint32_t crc32_update(uint32_t crc, const void *buf, size_t len);

#endif
