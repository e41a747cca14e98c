/*
 * l1_shm: the L1 POSIX shared-memory segment and its on-segment layout.
 *
 *   0             header (struct l1_seg_header, padded to align)
 *   table_offset  object table: table_entries x struct l1_seg_entry
 *   data_offset   data area (objects), up to data_offset + data_bytes
 *
 * Ownership: the lmcd that creates a segment holds an exclusive flock() on
 * it for its whole life (the fd stays open), and writes a random 128-bit
 * instance id into the header. The kernel drops the lock when the owner
 * dies, however it dies, so "the lock can be taken" is the proof that the
 * owner is gone: pids collide across PID namespaces and a header can be
 * forged, a lock held by a live process cannot. lmcd unlinks only a
 * segment that carries its magic and whose lock it holds at that moment,
 * and at stop only while the name still points at the inode it created.
 *
 * Commitment: the header and the object table (what lmcd itself writes)
 * are committed with fallocate() before anything is written, so a full
 * /dev/shm fails the start cleanly instead of SIGBUS; data ranges are
 * committed per object (l1_shm_back). lmcd never grows the file after
 * creating it (FALLOC_FL_KEEP_SIZE), so a segment shorter than its size
 * means another process truncated it (l1_shm_intact; recovery in l1.c).
 *
 * The header and table let a later lmcd re-adopt READY objects after a
 * restart (warm restart, not implemented): the header says what the keys
 * mean (chunk size, hash algorithm, alignment) and who owns the segment;
 * the table lists every object. Locks, TTLs and LRU order live in process
 * memory only. Every process that maps the segment can read and write all
 * of it (docs/l1.md, trust model), so a future reader must validate.
 *
 * Threads: create/destroy run once, from l1_create/l1_destroy; restore
 * runs under l1.mu; back and intact take no lock and may run anywhere.
 */
#ifndef LMCD_L1_L1_SHM_H
#define LMCD_L1_L1_SHM_H

#include <stdbool.h>
#include <stdint.h>

#include "l1/l1.h"

#define L1_SEG_MAGIC "LMCDL1\0\0"
/* 2: ownership by flock + instance id. Version 1 segments (no lock) are
 * reclaimed only under their own (configured) name, never by the scan.
 * 3: 64-byte table entries (offset in align units from data_offset, no
 * alloc_bytes); ownership as in 2, so the scan reclaims both. */
#define L1_SEG_LAYOUT_VERSION 3u
#define L1_SHM_DEFAULT_PREFIX "lmcache_l1_pool_"

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
    uint8_t instance_id[16];  /* random per lmcd run (layout 2) */
};

enum l1_seg_state {
    L1_SEG_FREE = 0,
    L1_SEG_RESERVED = 1, /* being written: never adopt */
    L1_SEG_READY = 2,    /* complete payload */
    L1_SEG_PENDING_FREE = 3, /* removed by clear(force), still held */
};

/* Layout 3. The key is kept only here (lmcd's index compares against it,
 * docs/l1.md "Metadata per object"); the object's bytes are at
 * data_offset + offset_units * align_bytes, its allocation is length
 * rounded up to align_bytes. */
struct l1_seg_entry {
    struct l1_key key;
    uint64_t length;       /* payload bytes */
    uint32_t offset_units; /* from data_offset, in align_bytes units */
    uint32_t state;        /* enum l1_seg_state */
};
static_assert(sizeof(struct l1_seg_entry) == 64, "segment entry layout is fixed");

struct l1_guard;

struct l1_shm {
    char name[256]; /* without leading '/' */
    uint8_t *base;
    uint64_t size;
    uint64_t meta_bytes; /* header + table: committed at create and restore */
    int fd;              /* open for life: holds the owner lock, backs ranges */
    struct l1_commit *commit; /* lazy: which regions are backed, commit-ahead (l1_commit.h) */
    uint64_t dev, ino;   /* the inode we created */
    uint8_t instance_id[16];
    struct l1_guard *guard;
    bool lazy;
    bool mlocked;
};

/* Creates and maps the segment "/"+name (name NULL or "": the default
 * lmcache_l1_pool_<pid>), mode 0600 (0660 with `group`), and takes its
 * owner lock. Reclaims first every stale lmcd segment of the default
 * pattern and of this name (owner lock free, lmcd magic), logging each.
 * A name held by a live owner (or a foreign file) is -EBUSY for an
 * explicit name; the default name then falls back to a unique one.
 * Commits meta_bytes (header and table) in every mode and, non-lazy, the
 * whole segment (ENOSPC when /dev/shm is too small), and mlock()s when
 * RLIMIT_MEMLOCK allows. 0 or -errno; one ERROR line says what failed. */
int l1_shm_create(struct l1_shm *s, const char *name, const char *group, uint64_t size,
                  uint64_t meta_bytes, bool lazy);
/* Commits the tmpfs pages behind [off, off+len) now, so a write into them
 * can never raise SIGBUS because /dev/shm filled up. 0, -ENOSPC (no room),
 * -EIO (the segment was truncated), -errno. Ranges backed before cost no
 * fallocate, and the space after each range is backed ahead by a thread
 * (l1_commit.h). Thread-safe. */
int l1_shm_back(struct l1_shm *s, uint64_t off, uint64_t len);
/* Whether every page of [off, off+len) is known backed (l1_shm_back would
 * not fallocate). Takes no lock. */
bool l1_shm_backed(const struct l1_shm *s, uint64_t off, uint64_t len);
/* False when another process truncated the segment (fstat shorter than
 * its size, or an access faulted: l1_guard). Takes no lock. */
bool l1_shm_intact(struct l1_shm *s);
/* Restores a truncated segment in place: size, committed header and table
 * (zeroed), a fresh shared mapping at the same address. Workers keep
 * their mapping of the same file; every byte in it is now zero.
 * 0 or -errno (the segment stays lost; retry later). */
int l1_shm_restore(struct l1_shm *s);
/* Unmaps, unlinks (only while the name is still our inode), releases the
 * lock. Safe on a zeroed struct with fd = -1. */
void l1_shm_destroy(struct l1_shm *s);

#endif
