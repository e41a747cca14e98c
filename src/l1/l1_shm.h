/*
 * l1_shm: the L1 POSIX shared-memory segment and its on-segment layout.
 *
 *   0             header (struct l1_seg_header, padded to align)
 *   table_offset  object table: table_entries x struct l1_seg_entry
 *   data_offset   data area (objects), up to data_offset + data_bytes
 *
 * The header and table let a later lmcd re-adopt READY objects after a
 * restart (warm restart, not implemented): the header says what the keys
 * mean (chunk size, hash algorithm, alignment) and who owns the segment;
 * the table lists every object. Locks, TTLs and LRU order live in process
 * memory only. Every process that maps the segment can read and write all
 * of it (docs/l1.md, trust model), so a future reader must validate.
 *
 * Threads: l1_shm_create/destroy run once, from l1_create/l1_destroy.
 */
#ifndef LMCD_L1_L1_SHM_H
#define LMCD_L1_L1_SHM_H

#include <stdbool.h>
#include <stdint.h>

#include "l1/l1.h"

#define L1_SEG_MAGIC "LMCDL1\0\0"
#define L1_SEG_LAYOUT_VERSION 1u

struct l1_seg_header {
    char magic[8];
    uint32_t layout_version;
    uint32_t header_bytes;    /* sizeof(struct l1_seg_header) */
    uint64_t owner_pid;       /* the lmcd that created the segment */
    uint64_t created_wall_ns;
    uint64_t segment_bytes;
    uint64_t align_bytes;
    uint64_t chunk_size;
    char hash_name[32];       /* NUL-terminated */
    uint64_t table_offset;
    uint64_t table_entries;
    uint64_t entry_bytes;     /* sizeof(struct l1_seg_entry) */
    uint64_t data_offset;
    uint64_t data_bytes;
};

enum l1_seg_state {
    L1_SEG_FREE = 0,
    L1_SEG_RESERVED = 1, /* being written: never adopt */
    L1_SEG_READY = 2,    /* complete payload */
    L1_SEG_PENDING_FREE = 3, /* removed by clear(force), still held */
};

struct l1_seg_entry {
    struct l1_key key;
    uint64_t offset;      /* from the segment base */
    uint64_t length;      /* payload bytes */
    uint64_t alloc_bytes; /* allocation (length rounded to align) */
    uint32_t state;       /* enum l1_seg_state */
    uint32_t reserved0;
};
static_assert(sizeof(struct l1_seg_entry) == 80, "segment entry layout is fixed");

struct l1_shm {
    char name[256]; /* without leading '/' */
    uint8_t *base;
    uint64_t size;
    int fd;         /* lazy mode: kept open to back ranges with fallocate; else -1 */
    struct l1_commit *commit; /* lazy mode: what is backed, and the commit-ahead thread */
    bool mlocked;
    bool unlink_at_destroy;
};

/* Creates and maps the segment "/"+name (O_CREAT|O_EXCL, mode 0600, or 0660
 * with group `group`). A segment of the same name is removed first unless
 * its header names a live lmcd other than us (-EBUSY). Lazy: pages are
 * committed on first touch; non-lazy: all pages are allocated up front
 * (ENOSPC when /dev/shm is too small) and mlock()ed when RLIMIT_MEMLOCK
 * allows. 0 or -errno; logs what failed. */
int l1_shm_create(struct l1_shm *s, const char *name, const char *group, uint64_t size,
                  bool lazy);
/* Lazy mode: allocates the tmpfs pages behind [off, off+len) now, so that a
 * write into them can never raise SIGBUS because /dev/shm filled up.
 * 0, or -ENOSPC (no room), -errno. A no-op when not lazy (all pages were
 * allocated at create). Ranges backed before cost nothing, and the space
 * after each range is backed ahead by a thread (l1_commit.h). Thread-safe. */
int l1_shm_back(struct l1_shm *s, uint64_t off, uint64_t len);
/* Unmaps and unlinks. Safe on a zeroed struct. */
void l1_shm_destroy(struct l1_shm *s);

#endif
