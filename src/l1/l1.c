/*
 * l1: index, object states, read locks and demand eviction. See l1.h for the
 * contract and l1_internal.h for the lock table.
 *
 * Everything runs under one mutex (mu). Critical sections are short: a hash
 * probe, a list move, an allocator call; payload bytes are never touched here.
 * Expired reservations and expired read locks are settled lazily: both lists
 * are kept in expiry order (a constant TTL and a monotonic clock make "append
 * at the tail" expiry order), so settling costs only what has expired.
 */
#define LOG_MODULE "lmcd.l1"
#include "l1/l1_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "util/log.h"

#define L1_MAX_READERS 65535u
#define L1_MIN_BUCKETS 1024u

/* ---- lists ---------------------------------------------------------------- */

static void list_init(struct l1_node *h) { h->prev = h->next = h; }

static void list_append(struct l1_node *h, struct l1_node *n)
{
    n->prev = h->prev;
    n->next = h;
    h->prev->next = n;
    h->prev = n;
}

static void list_del(struct l1_node *n)
{
    if (!n->next)
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

/* ---- hash index ----------------------------------------------------------- */

static uint64_t key_hash(const struct l1_key *k) { return XXH3_64bits(k, sizeof(*k)); }

static struct l1_obj *index_find(struct l1 *l1, const struct l1_key *k)
{
    uint64_t h = key_hash(k);
    for (struct l1_obj *o = l1->buckets[h & (l1->nb - 1)]; o; o = o->hnext)
        if (o->hash == h && memcmp(&o->key, k, sizeof(*k)) == 0)
            return o;
    return NULL;
}

/* Doubles the bucket array; on malloc failure keeps the old one (longer chains). */
static void index_grow(struct l1 *l1)
{
    uint64_t nb = l1->nb * 2;
    struct l1_obj **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (uint64_t i = 0; i < l1->nb; i++) {
        struct l1_obj *o = l1->buckets[i];
        while (o) {
            struct l1_obj *next = o->hnext;
            o->hnext = b[o->hash & (nb - 1)];
            b[o->hash & (nb - 1)] = o;
            o = next;
        }
    }
    free(l1->buckets);
    l1->buckets = b;
    l1->nb = nb;
}

static void index_insert(struct l1 *l1, struct l1_obj *o)
{
    if (l1->count >= l1->nb)
        index_grow(l1);
    struct l1_obj **b = &l1->buckets[o->hash & (l1->nb - 1)];
    o->hnext = *b;
    *b = o;
    l1->count++;
}

static void index_remove(struct l1 *l1, struct l1_obj *o)
{
    struct l1_obj **p = &l1->buckets[o->hash & (l1->nb - 1)];
    while (*p != o)
        p = &(*p)->hnext;
    *p = o->hnext;
    o->hnext = NULL;
    l1->count--;
}

/* ---- object table in the segment ----------------------------------------- */

static void table_write(struct l1 *l1, const struct l1_obj *o, enum l1_seg_state state)
{
    struct l1_seg_entry *e = &l1->table[o->slot];
    if (state == L1_SEG_RESERVED) {
        e->key = o->key;
        e->offset = o->ext->off;
        e->length = o->length;
        e->alloc_bytes = o->ext->len;
    }
    /* A reader of the table (warm restart) trusts READY only once the
     * fields above are in place. */
    __atomic_store_n(&e->state, (uint32_t)state, __ATOMIC_RELEASE);
}

/* ---- object lifecycle ----------------------------------------------------- */

/* Unlinks o from every structure, frees its extent and table slot. */
static void obj_free(struct l1 *l1, struct l1_obj *o)
{
    if (o->state != L1_OBJ_PENDING)
        index_remove(l1, o);
    list_del(&o->lru);
    if (o->q.next) {
        list_del(&o->q);
        if (o->state == L1_OBJ_RESERVED)
            l1->n_resv--;
        else if (o->state == L1_OBJ_READY)
            l1->n_locked--;
        else
            l1->n_pending--;
    }
    table_write(l1, o, L1_SEG_FREE);
    l1->free_slots[l1->n_free_slots++] = o->slot;
    l1_alloc_put(&l1->alloc, o->ext);
    free(o);
}

bool l1_evictable_locked(const struct l1_obj *o, uint64_t now)
{
    return o->state == L1_OBJ_READY && o->pins == 0 && (o->holders == 0 || o->expiry_ns <= now);
}

void l1_evict_obj_locked(struct l1 *l1, struct l1_obj *o)
{
    l1->st.evicted_count++;
    l1->st.evicted_bytes += o->ext->len;
    obj_free(l1, o);
}

/* A READY object's holders expired: it becomes unlocked. */
static void drop_holders(struct l1 *l1, struct l1_obj *o)
{
    if (o->holders)
        l1->st.expired_read_locks++; /* readers that never released: a metric to alert on */
    o->holders = 0;
    if (o->q.next && o->state == L1_OBJ_READY) {
        list_del(&o->q);
        l1->n_locked--;
    }
}

void l1_settle_locked(struct l1 *l1, uint64_t now)
{
    while (l1->resv.next != &l1->resv) {
        struct l1_obj *o = L1_OBJ_OF(l1->resv.next, q);
        if (o->expiry_ns > now)
            break;
        l1->st.expired_reservations++;
        obj_free(l1, o);
    }
    while (l1->locked.next != &l1->locked) {
        struct l1_obj *o = L1_OBJ_OF(l1->locked.next, q);
        if (o->expiry_ns > now)
            break;
        drop_holders(l1, o);
    }
    for (struct l1_node *n = l1->pending.next, *next; n != &l1->pending; n = next) {
        next = n->next;
        struct l1_obj *o = L1_OBJ_OF(n, q);
        if (o->pins == 0 && (o->expiry_ns <= now || (!o->was_reserved && o->holders == 0)))
            obj_free(l1, o);
    }
}

/* Removes o from the index after clear(true) while someone may still use
 * its bytes; it is freed when they finish or its TTL runs out. */
static void obj_make_pending(struct l1 *l1, struct l1_obj *o)
{
    index_remove(l1, o);
    list_del(&o->lru);
    if (o->q.next) {
        list_del(&o->q);
        if (o->state == L1_OBJ_RESERVED)
            l1->n_resv--;
        else
            l1->n_locked--;
    }
    o->was_reserved = o->state == L1_OBJ_RESERVED;
    o->state = L1_OBJ_PENDING;
    list_append(&l1->pending, &o->q);
    l1->n_pending++;
    table_write(l1, o, L1_SEG_PENDING_FREE);
}

static struct l1_obj *pending_find(struct l1 *l1, const struct l1_key *k, uint64_t id,
                                   bool match_id, bool want_reserved)
{
    for (struct l1_node *n = l1->pending.next; n != &l1->pending; n = n->next) {
        struct l1_obj *o = L1_OBJ_OF(n, q);
        if (o->was_reserved != want_reserved)
            continue;
        if (match_id ? o->id == id : memcmp(&o->key, k, sizeof(*k)) == 0)
            return o;
    }
    return NULL;
}

/* ---- creation ------------------------------------------------------------- */

void l1_opts_init(struct l1_opts *o)
{
    *o = (struct l1_opts){
        .align_bytes = 4096,
        .use_lazy = true,
        .read_ttl_s = 300,
        .write_ttl_s = 600,
        .policy = L1_POLICY_LRU,
        .trigger_watermark = 0.8,
        .eviction_ratio = 0.2,
        .chunk_size = 256,
        .hash_name = "blake3",
    };
}

static uint64_t round_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

static int check_opts(const struct l1_opts *o)
{
    const char *bad = NULL;
    if (o->size_bytes == 0)
        bad = "size_bytes must be > 0";
    else if (o->align_bytes == 0 || (o->align_bytes & (o->align_bytes - 1)))
        bad = "align_bytes must be a power of two";
    else if (o->read_ttl_s == 0 || o->write_ttl_s == 0)
        bad = "read and write TTLs must be > 0";
    else if (!(o->trigger_watermark >= 0 && o->trigger_watermark <= 1))
        bad = "trigger_watermark must be in [0, 1]";
    else if (!(o->eviction_ratio >= 0 && o->eviction_ratio <= 1))
        bad = "eviction_ratio must be in [0, 1]";
    else if (o->policy != L1_POLICY_LRU && o->policy != L1_POLICY_NOOP)
        bad = "unknown eviction policy";
    else if (o->hash_name && strlen(o->hash_name) >= sizeof(((struct l1_seg_header *)0)->hash_name))
        bad = "hash name too long";
    else if ((o->shm_name && strlen(o->shm_name) >= 250) ||
             (o->shm_group && strlen(o->shm_group) >= 256))
        bad = "shm name or group too long";
    if (bad) {
        log_error("Invalid L1 configuration: %s", bad);
        return -EINVAL;
    }
    return 0;
}

/* Lays out header, table and data area; fails when no data unit is left. */
static int plan_layout(struct l1 *l1, struct l1_seg_header *h)
{
    const struct l1_opts *o = &l1->opts;
    uint64_t a = o->align_bytes > 64 ? o->align_bytes : 64;
    uint64_t hdr = round_up(sizeof(*h), a);
    uint64_t entries = o->max_objects;
    if (entries == 0) {
        entries = o->size_bytes / 65536;
        if (entries < 256)
            entries = 256;
    }
    if (entries > UINT32_MAX || entries > o->size_bytes / sizeof(struct l1_seg_entry))
        goto small;
    uint64_t table = round_up(entries * sizeof(struct l1_seg_entry), a);
    if (hdr + table >= o->size_bytes)
        goto small;
    uint64_t data = (o->size_bytes - hdr - table) & ~(o->align_bytes - 1);
    if (data < o->align_bytes)
        goto small;
    *h = (struct l1_seg_header){ 0 };
    memcpy(h->magic, L1_SEG_MAGIC, sizeof(h->magic));
    h->layout_version = L1_SEG_LAYOUT_VERSION;
    h->header_bytes = sizeof(*h);
    h->owner_pid = (uint64_t)getpid();
    h->created_wall_ns = clock_wall_ns();
    h->segment_bytes = o->size_bytes;
    h->align_bytes = o->align_bytes;
    h->chunk_size = o->chunk_size;
    snprintf(h->hash_name, sizeof(h->hash_name), "%s", o->hash_name ? o->hash_name : "");
    h->table_offset = hdr;
    h->table_entries = entries;
    h->entry_bytes = sizeof(struct l1_seg_entry);
    h->data_offset = hdr + table;
    h->data_bytes = data;
    return 0;
small:
    log_error("L1 size %" PRIu64 " bytes leaves no room for data after the header and a "
              "%" PRIu64 "-entry object table",
              o->size_bytes, entries);
    return -EINVAL;
}

static int init_sync(struct l1 *l1)
{
    pthread_condattr_t ca;
    if (pthread_mutex_init(&l1->mu, NULL) != 0)
        return -ENOMEM;
    if (pthread_mutex_init(&l1->evict_mu, NULL) != 0)
        goto fail_mu;
    if (pthread_condattr_init(&ca) != 0)
        goto fail_emu;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&l1->evict_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc == 0)
        return 0;
fail_emu:
    pthread_mutex_destroy(&l1->evict_mu);
fail_mu:
    pthread_mutex_destroy(&l1->mu);
    return -ENOMEM;
}

int l1_create(const struct l1_opts *o, struct l1 **out)
{
    int rc;
    struct l1_seg_header h;
    struct l1 *l1 = NULL;
    bool sync = false;

    *out = NULL;
    if ((rc = check_opts(o)) < 0)
        return rc;
    if (!(l1 = calloc(1, sizeof(*l1))))
        return -ENOMEM;
    l1->opts = *o;
    l1->shm.fd = -1;
    /* NULL: l1_shm picks the default name (and a unique one if it is taken). */
    snprintf(l1->shm_name_buf, sizeof(l1->shm_name_buf), "%s", o->shm_name ? o->shm_name : "");
    l1->opts.shm_name = l1->shm_name_buf[0] ? l1->shm_name_buf : NULL;
    if (o->shm_group) {
        snprintf(l1->shm_group_buf, sizeof(l1->shm_group_buf), "%s", o->shm_group);
        l1->opts.shm_group = l1->shm_group_buf;
    }
    snprintf(l1->hash_name_buf, sizeof(l1->hash_name_buf), "%s",
             o->hash_name ? o->hash_name : "");
    l1->opts.hash_name = l1->hash_name_buf;
    l1->clock = o->clock ? o->clock : &clock_monotonic;
    l1->opts.clock = l1->clock;
    l1->read_ttl_ns = (uint64_t)o->read_ttl_s * 1000000000ull;
    l1->write_ttl_ns = (uint64_t)o->write_ttl_s * 1000000000ull;
    list_init(&l1->lru);
    list_init(&l1->resv);
    list_init(&l1->locked);
    list_init(&l1->pending);
    l1->next_id = 1;
    l1->st.read_ttl_s = o->read_ttl_s;
    l1->st.write_ttl_s = o->write_ttl_s;

    if ((rc = plan_layout(l1, &h)) < 0)
        goto fail;
    rc = -ENOMEM;
    l1->nb = L1_MIN_BUCKETS;
    l1->table_entries = h.table_entries;
    if (!(l1->buckets = calloc(l1->nb, sizeof(*l1->buckets))) ||
        !(l1->free_slots = malloc(h.table_entries * sizeof(*l1->free_slots))))
        goto fail;
    for (uint64_t i = 0; i < h.table_entries; i++)
        l1->free_slots[i] = (uint32_t)(h.table_entries - 1 - i);
    l1->n_free_slots = h.table_entries;
    if ((rc = l1_alloc_init(&l1->alloc, h.data_offset, h.data_bytes, o->align_bytes)) < 0)
        goto fail;
    if ((rc = init_sync(l1)) < 0)
        goto fail;
    sync = true;
    if ((rc = l1_shm_create(&l1->shm, l1->opts.shm_name, l1->opts.shm_group, o->size_bytes,
                            h.data_offset, o->use_lazy)) < 0)
        goto fail;
    memcpy(h.instance_id, l1->shm.instance_id, sizeof(h.instance_id));
    l1->hdr_init = h;
    l1->hdr = (struct l1_seg_header *)l1->shm.base;
    *l1->hdr = h; /* committed by l1_shm_create: cannot fault on a full /dev/shm */
    l1->table = (struct l1_seg_entry *)(l1->shm.base + h.table_offset);
    log_info("L1 ready: %" PRIu64 " data bytes at offset %" PRIu64 ", %" PRIu64
             " object slots, align %" PRIu64 ", policy %s, watermark %.2f, ratio %.2f",
             h.data_bytes, h.data_offset, h.table_entries, o->align_bytes,
             o->policy == L1_POLICY_LRU ? "LRU" : "noop", o->trigger_watermark,
             o->eviction_ratio);
    *out = l1;
    return 0;
fail:
    if (sync) {
        pthread_cond_destroy(&l1->evict_cv);
        pthread_mutex_destroy(&l1->evict_mu);
        pthread_mutex_destroy(&l1->mu);
    }
    l1_alloc_fini(&l1->alloc);
    free(l1->free_slots);
    free(l1->buckets);
    free(l1);
    return rc;
}

static void free_list(struct l1_node *h, size_t field_off)
{
    for (struct l1_node *n = h->next, *next; n != h; n = next) {
        next = n->next;
        free((char *)n - field_off);
    }
}

void l1_destroy(struct l1 *l1)
{
    if (!l1)
        return;
    l1_evict_stop(l1);
    /* Every object is on exactly one of these lists: READY on lru,
     * RESERVED on resv, PENDING on pending. */
    free_list(&l1->lru, __builtin_offsetof(struct l1_obj, lru));
    free_list(&l1->resv, __builtin_offsetof(struct l1_obj, q));
    free_list(&l1->pending, __builtin_offsetof(struct l1_obj, q));
    l1_shm_destroy(&l1->shm);
    l1_alloc_fini(&l1->alloc);
    pthread_cond_destroy(&l1->evict_cv);
    pthread_mutex_destroy(&l1->evict_mu);
    pthread_mutex_destroy(&l1->mu);
    free(l1->free_slots);
    free(l1->buckets);
    free(l1);
}

void *l1_base(const struct l1 *l1) { return l1->shm.base; }
uint64_t l1_pool_size(const struct l1 *l1) { return l1->shm.size; }
const char *l1_shm_name(const struct l1 *l1) { return l1->shm.name; }

const char *l1_status_name(enum l1_status s)
{
    static const char *const names[] = { "ok", "exists", "busy", "nomem",
                                         "invalid", "not_found", "expired" };
    return (unsigned)s < sizeof(names) / sizeof(names[0]) ? names[s] : "unknown";
}

static void ref_of(const struct l1_obj *o, struct l1_ref *r)
{
    r->id = o->id;
    r->offset = o->ext->off;
    r->length = o->length;
    r->lock_epoch = o->lock_epoch;
}

/* ---- writes --------------------------------------------------------------- */

/* Demand eviction state for one reserve_write batch. The cursor walks the
 * LRU list once per batch: only evicted objects leave it meanwhile, and the
 * cursor always moves past an object before it is freed. */
struct room {
    struct l1_node *cursor;
    bool exhausted;
};

/* Evicts the next evictable object at or after the cursor; false when none. */
static bool evict_next(struct l1 *l1, struct room *rm, uint64_t now)
{
    while (rm->cursor != &l1->lru) {
        struct l1_obj *o = L1_OBJ_OF(rm->cursor, lru);
        rm->cursor = rm->cursor->next;
        if (l1_evictable_locked(o, now)) {
            l1->st.demand_evicted_count++;
            l1_evict_obj_locked(l1, o);
            return true;
        }
    }
    rm->exhausted = true;
    return false;
}

/* An extent and a table slot for `bytes`, evicting on demand (LRU only). */
static int make_room(struct l1 *l1, struct room *rm, uint64_t bytes, uint64_t now,
                     struct l1_extent **ext)
{
    uint64_t need = l1_alloc_round(&l1->alloc, bytes);
    for (;;) {
        if (l1->n_free_slots > 0 && l1->alloc.bytes - l1->alloc.used >= need &&
            l1_alloc_get(&l1->alloc, bytes, ext) == 0)
            return 0;
        if (l1->opts.policy != L1_POLICY_LRU || rm->exhausted || !evict_next(l1, rm, now))
            return -ENOMEM;
    }
}

static enum l1_status reserve_one(struct l1 *l1, struct room *rm, const struct l1_key *k,
                                  uint64_t size, uint64_t writer, uint64_t now,
                                  struct l1_ref *ref)
{
    static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000, 5);
    if (size == 0 || size > l1->alloc.bytes)
        return L1_INVALID;
    struct l1_obj *o = index_find(l1, k);
    if (o && o->state == L1_OBJ_READY)
        return L1_EXISTS;
    if (o && o->expiry_ns > now)
        return L1_BUSY;
    if (o) {
        /* An abandoned reservation: never published, never readable. */
        l1->st.expired_reservations++;
        obj_free(l1, o);
    }
    struct l1_extent *ext;
    if (!(o = calloc(1, sizeof(*o))) || make_room(l1, rm, size, now, &ext) < 0) {
        free(o);
        l1->st.alloc_failures++;
        log_rl(&rl, LOG_WARNING,
               "L1 cannot fit an object of %" PRIu64 " bytes: %" PRIu64 " of %" PRIu64
               " bytes used, %" PRIu64 " of %" PRIu64 " object slots free, nothing %s; "
               "the chunk is skipped",
               size, l1->alloc.used, l1->alloc.bytes, l1->n_free_slots, l1->table_entries,
               l1->opts.policy == L1_POLICY_LRU ? "evictable (all locked or reserved)"
                                                : "evicted (policy noop)");
        return L1_NOMEM;
    }
    o->key = *k;
    o->hash = key_hash(k);
    o->id = l1->next_id++;
    o->writer = writer;
    o->length = size;
    o->expiry_ns = now + l1->write_ttl_ns;
    o->ext = ext;
    o->state = L1_OBJ_RESERVED;
    o->slot = l1->free_slots[--l1->n_free_slots];
    index_insert(l1, o);
    list_append(&l1->resv, &o->q);
    l1->n_resv++;
    table_write(l1, o, L1_SEG_RESERVED);
    ref_of(o, ref);
    return L1_OK;
}

int l1_reserve_write(struct l1 *l1, const struct l1_key *keys, const uint64_t *sizes,
                     size_t n, uint64_t writer, enum l1_status *st, struct l1_ref *refs)
{
    if (n && (!keys || !sizes || !st || !refs))
        return -EINVAL;
    int done = 0;
    l1_check(l1);
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    l1_settle_locked(l1, now);
    bool broken = __atomic_load_n(&l1->seg_broken, __ATOMIC_RELAXED);
    struct room rm = { l1->lru.next, false };
    for (size_t i = 0; i < n; i++) {
        st[i] = broken ? L1_NOMEM : reserve_one(l1, &rm, &keys[i], sizes[i], writer, now, &refs[i]);
        done += st[i] == L1_OK;
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

/* The live reservation (key, id) of `writer`, or NULL with *why set: an
 * expired one is freed (L1_EXPIRED); one removed by clear(true) is released,
 * since its writer is done with it (L1_NOTFOUND). */
static struct l1_obj *take_reservation(struct l1 *l1, const struct l1_key *k, uint64_t id,
                                       uint64_t writer, uint64_t now, enum l1_status *why)
{
    struct l1_obj *o = index_find(l1, k);
    *why = L1_NOTFOUND;
    if (o && o->state == L1_OBJ_RESERVED && o->id == id && o->writer == writer) {
        if (o->expiry_ns > now)
            return o;
        l1->st.expired_reservations++;
        obj_free(l1, o);
        *why = L1_EXPIRED;
        return NULL;
    }
    struct l1_obj *p = pending_find(l1, k, id, true, true);
    if (p && p->writer == writer)
        obj_free(l1, p);
    return NULL;
}

int l1_publish(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n,
               uint64_t writer, enum l1_status *st)
{
    if (n && (!keys || !ids))
        return -EINVAL;
    int done = 0;
    l1_check(l1); /* bytes written into a truncated segment are gone: never publish them */
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n; i++) {
        enum l1_status s;
        struct l1_obj *o = take_reservation(l1, &keys[i], ids[i], writer, now, &s);
        if (o) {
            list_del(&o->q);
            l1->n_resv--;
            o->state = L1_OBJ_READY;
            o->holders = 0;
            o->expiry_ns = 0;
            list_append(&l1->lru, &o->lru);
            table_write(l1, o, L1_SEG_READY);
            s = L1_OK;
            done++;
        }
        if (st)
            st[i] = s;
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

int l1_abort(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n,
             uint64_t writer)
{
    if (n && (!keys || !ids))
        return -EINVAL;
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n; i++) {
        enum l1_status why;
        struct l1_obj *o = take_reservation(l1, &keys[i], ids[i], writer, now, &why);
        if (o) {
            obj_free(l1, o);
            done++;
        }
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

int l1_abort_all(struct l1 *l1, uint64_t writer)
{
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    for (struct l1_node *n = l1->resv.next, *next; n != &l1->resv; n = next) {
        next = n->next;
        struct l1_obj *o = L1_OBJ_OF(n, q);
        if (o->writer == writer) {
            obj_free(l1, o);
            done++;
        }
    }
    for (struct l1_node *n = l1->pending.next, *next; n != &l1->pending; n = next) {
        next = n->next;
        struct l1_obj *o = L1_OBJ_OF(n, q);
        if (o->was_reserved && o->writer == writer)
            obj_free(l1, o);
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

/* ---- reads ---------------------------------------------------------------- */

static void lock_obj(struct l1 *l1, struct l1_obj *o, uint32_t readers, uint64_t now)
{
    if (o->holders && o->expiry_ns <= now)
        drop_holders(l1, o); /* an expired lock restarts from zero */
    if (o->holders == 0)
        o->lock_epoch++; /* a new run of holders: late releases of the old run are ignored */
    uint64_t h = (uint64_t)o->holders + readers;
    o->holders = h > UINT32_MAX ? UINT32_MAX : (uint32_t)h;
    o->expiry_ns = now + l1->read_ttl_ns;
    /* Moving to the tail keeps `locked` in expiry order. */
    if (o->q.next)
        list_del(&o->q);
    else
        l1->n_locked++;
    list_append(&l1->locked, &o->q);
}

static struct l1_obj *ready_find(struct l1 *l1, const struct l1_key *k)
{
    struct l1_obj *o = index_find(l1, k);
    return o && o->state == L1_OBJ_READY ? o : NULL;
}

int l1_lock_prefix(struct l1 *l1, const struct l1_key *keys, size_t n, uint32_t readers,
                   struct l1_ref *refs)
{
    if (readers == 0 || readers > L1_MAX_READERS || (n && !keys) || n > INT32_MAX)
        return -EINVAL;
    size_t i;
    l1_check(l1);
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (i = 0; i < n; i++) {
        struct l1_obj *o = ready_find(l1, &keys[i]);
        if (!o)
            break;
        lock_obj(l1, o, readers, now);
        if (refs)
            ref_of(o, &refs[i]);
    }
    pthread_mutex_unlock(&l1->mu);
    return (int)i;
}

int l1_lock(struct l1 *l1, const struct l1_key *keys, size_t n, uint32_t readers,
            struct l1_ref *refs)
{
    if (readers == 0 || readers > L1_MAX_READERS || (n && !keys))
        return -EINVAL;
    int rc = 0;
    l1_check(l1);
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n && rc == 0; i++)
        if (!ready_find(l1, &keys[i]))
            rc = -ENOENT;
    for (size_t i = 0; i < n && rc == 0; i++) {
        struct l1_obj *o = ready_find(l1, &keys[i]);
        lock_obj(l1, o, readers, now);
        if (refs)
            ref_of(o, &refs[i]);
    }
    pthread_mutex_unlock(&l1->mu);
    return rc;
}

/* Drops holders from a READY or PENDING object; true when some were held. */
static bool unlock_obj(struct l1 *l1, struct l1_obj *o, uint32_t readers, uint64_t now)
{
    if (o->holders == 0 || o->expiry_ns <= now)
        return false; /* expired: the lock already let go of everyone */
    o->holders = o->holders > readers ? o->holders - readers : 0;
    if (o->holders == 0) {
        if (o->state == L1_OBJ_PENDING && o->pins == 0)
            obj_free(l1, o);
        else
            drop_holders(l1, o);
    }
    return true;
}

/* The object a release names: READY under the key, or removed by a forced
 * clear and still held; NULL when it is another (newer) object. */
static struct l1_obj *held_find(struct l1 *l1, const struct l1_key *k, const uint64_t *id)
{
    struct l1_obj *o = ready_find(l1, k);
    if (o && id && o->id != *id)
        o = NULL;
    if (!o)
        o = pending_find(l1, k, id ? *id : 0, id != NULL, false);
    return o;
}

int l1_unlock(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n,
              uint32_t readers)
{
    if (readers == 0 || (n && !keys))
        return -EINVAL;
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n; i++) {
        struct l1_obj *o = held_find(l1, &keys[i], ids ? &ids[i] : NULL);
        if (o && unlock_obj(l1, o, readers, now))
            done++;
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

int l1_unlock_refs(struct l1 *l1, const struct l1_key *keys, const struct l1_ref *refs, size_t n,
                   uint32_t readers)
{
    if (readers == 0 || (n && (!keys || !refs)))
        return -EINVAL;
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n; i++) {
        struct l1_obj *o = held_find(l1, &keys[i], &refs[i].id);
        if (o && o->lock_epoch == refs[i].lock_epoch && unlock_obj(l1, o, readers, now))
            done++;
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

/* ---- pins (lmcd's own zero-copy readers) ---------------------------------- */

int l1_pin_prefix(struct l1 *l1, const struct l1_key *keys, size_t n, uint64_t max_pinned_bytes,
                  struct l1_ref *refs, bool *over_budget)
{
    if ((n && (!keys || !refs)) || n > INT32_MAX)
        return -EINVAL;
    size_t i;
    bool over = false;
    pthread_mutex_lock(&l1->mu);
    for (i = 0; i < n; i++) {
        struct l1_obj *o = ready_find(l1, &keys[i]);
        if (!o)
            break;
        /* an object already pinned costs nothing more: the budget bounds
         * memory that eviction cannot reclaim, not frames */
        if (o->pins == UINT32_MAX || (o->pins == 0 && l1->pinned_bytes + o->ext->len > max_pinned_bytes)) {
            over = true;
            break;
        }
        if (o->pins++ == 0) {
            l1->n_pinned++;
            l1->pinned_bytes += o->ext->len;
        }
        ref_of(o, &refs[i]);
    }
    pthread_mutex_unlock(&l1->mu);
    if (over_budget)
        *over_budget = over;
    return (int)i;
}

int l1_unpin(struct l1 *l1, const struct l1_key *keys, const struct l1_ref *refs, size_t n)
{
    if (n && (!keys || !refs))
        return -EINVAL;
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n; i++) {
        struct l1_obj *o = held_find(l1, &keys[i], &refs[i].id);
        if (!o || !o->pins)
            continue; /* cannot happen: a pinned object is never freed */
        if (--o->pins == 0) {
            l1->n_pinned--;
            l1->pinned_bytes -= o->ext->len;
            /* removed by a forced clear meanwhile: free it once nothing holds it */
            if (o->state == L1_OBJ_PENDING && (o->holders == 0 || o->expiry_ns <= now))
                obj_free(l1, o);
        }
        done++;
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

bool l1_backed(struct l1 *l1, const struct l1_ref *ref)
{
    return l1_shm_backed(&l1->shm, ref->offset, ref->length);
}

int l1_back(struct l1 *l1, const struct l1_ref *ref)
{
    int rc = l1_shm_back(&l1->shm, ref->offset, ref->length); /* offsets are from the segment base */
    if (rc == -EIO)
        l1_check(l1); /* truncated: drop everything and restore now */
    return rc;
}

int l1_get(struct l1 *l1, const struct l1_key *key, struct l1_ref *ref)
{
    int rc = -ENOENT;
    l1_check(l1);
    pthread_mutex_lock(&l1->mu);
    struct l1_obj *o = ready_find(l1, key);
    if (o) {
        ref_of(o, ref);
        rc = 0;
    }
    pthread_mutex_unlock(&l1->mu);
    return rc;
}

int l1_touch(struct l1 *l1, const struct l1_key *keys, size_t n)
{
    if (n && !keys)
        return -EINVAL;
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    for (size_t i = 0; i < n; i++) {
        struct l1_obj *o = ready_find(l1, &keys[i]);
        if (o) {
            list_del(&o->lru);
            list_append(&l1->lru, &o->lru);
            done++;
        }
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

/* ---- maintenance ---------------------------------------------------------- */

static int clear_locked(struct l1 *l1, bool force, uint64_t now)
{
    int done = 0;
    l1_settle_locked(l1, now);
    for (struct l1_node *n = l1->lru.next, *next; n != &l1->lru; n = next) {
        next = n->next;
        struct l1_obj *o = L1_OBJ_OF(n, lru);
        if (l1_evictable_locked(o, now))
            obj_free(l1, o);
        else if (force)
            obj_make_pending(l1, o);
        else
            continue;
        done++;
    }
    if (force) {
        while (l1->resv.next != &l1->resv) {
            obj_make_pending(l1, L1_OBJ_OF(l1->resv.next, q));
            done++;
        }
    }
    return done;
}

int l1_clear(struct l1 *l1, bool force)
{
    l1_check(l1);
    pthread_mutex_lock(&l1->mu);
    int done = clear_locked(l1, force, clock_now_ns(l1->clock));
    uint64_t pending = l1->n_pending;
    pthread_mutex_unlock(&l1->mu);
    log_info("L1 cleared%s: %d objects removed, %" PRIu64
             " still in use and freed when released",
             force ? " (force)" : "", done, pending);
    return done;
}

/* ---- segment health ------------------------------------------------------- */

void l1_recover_locked(struct l1 *l1, uint64_t now)
{
    static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000, 5);
    bool broken = __atomic_load_n(&l1->seg_broken, __ATOMIC_RELAXED);
    if (!broken && l1_shm_intact(&l1->shm))
        return; /* another thread restored it meanwhile */
    if (!broken) {
        struct stat st;
        long long cur = fstat(l1->shm.fd, &st) == 0 ? (long long)st.st_size : -1;
        /* Every object's bytes may be gone (zero pages). Held objects become
         * pending, so an offset a reader or writer still has is not reused
         * until they let go; nothing dropped here is ever served again. */
        int dropped = clear_locked(l1, true, now);
        l1->st.segment_losses++;
        __atomic_store_n(&l1->seg_gen, l1->seg_gen + 1, __ATOMIC_RELEASE);
        __atomic_store_n(&l1->seg_broken, true, __ATOMIC_RELEASE);
        log_rl(&rl, LOG_ERROR,
               "L1 segment /%s was truncated by another process (now %lld of %" PRIu64
               " bytes): %d cached objects dropped, %" PRIu64 " still held are freed when "
               "released; restoring the segment in place",
               l1->shm.name, cur, l1->shm.size, dropped, l1->n_pending);
    }
    int rc = l1_shm_restore(&l1->shm);
    if (rc < 0) {
        log_rl(&rl, LOG_ERROR, "Cannot restore L1 segment /%s: %s; no chunk is stored until it is",
               l1->shm.name, strerror(-rc));
        return;
    }
    *l1->hdr = l1->hdr_init;
    __atomic_store_n(&l1->seg_broken, false, __ATOMIC_RELEASE);
    log_rl(&rl, LOG_WARNING, "L1 segment /%s restored (empty); workers keep their mapping", l1->shm.name);
}

uint64_t l1_check(struct l1 *l1)
{
    if (__atomic_load_n(&l1->seg_broken, __ATOMIC_ACQUIRE) || !l1_shm_intact(&l1->shm)) {
        pthread_mutex_lock(&l1->mu);
        l1_recover_locked(l1, clock_now_ns(l1->clock));
        pthread_mutex_unlock(&l1->mu);
    }
    return __atomic_load_n(&l1->seg_gen, __ATOMIC_ACQUIRE);
}

void l1_stats_get(struct l1 *l1, struct l1_stats *out)
{
    l1_check(l1);
    pthread_mutex_lock(&l1->mu);
    l1_settle_locked(l1, clock_now_ns(l1->clock));
    *out = l1->st;
    out->total_object_count = l1->count;
    out->write_locked_count = l1->n_resv;
    out->read_locked_count = l1->n_locked;
    out->temporary_count = 0;
    out->pending_free_count = l1->n_pending;
    out->pinned_count = l1->n_pinned;
    out->pinned_bytes = l1->pinned_bytes;
    out->memory_used_bytes = l1->alloc.used;
    out->memory_total_bytes = l1->alloc.bytes;
    pthread_mutex_unlock(&l1->mu);
    out->memory_usage_ratio =
        out->memory_total_bytes ? (double)out->memory_used_bytes / (double)out->memory_total_bytes
                                : 0.0;
}

/* ---- for the L2 tier ------------------------------------------------------ */

int l1_renew(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n, uint64_t writer)
{
    if (n && (!keys || !ids))
        return -EINVAL;
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n; i++) {
        struct l1_obj *o = index_find(l1, &keys[i]);
        if (!(o && o->state == L1_OBJ_RESERVED && o->id == ids[i] && o->writer == writer))
            o = pending_find(l1, &keys[i], ids[i], true, true);
        if (!o || o->writer != writer || o->expiry_ns <= now)
            continue;
        o->expiry_ns = now + l1->write_ttl_ns;
        /* the lists are kept in expiry order: move to the tail */
        list_del(&o->q);
        list_append(o->state == L1_OBJ_RESERVED ? &l1->resv : &l1->pending, &o->q);
        done++;
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

int l1_remove(struct l1 *l1, const struct l1_key *keys, const uint64_t *ids, size_t n, bool force)
{
    if (n && !keys)
        return -EINVAL;
    int done = 0;
    pthread_mutex_lock(&l1->mu);
    uint64_t now = clock_now_ns(l1->clock);
    for (size_t i = 0; i < n; i++) {
        struct l1_obj *o = ready_find(l1, &keys[i]);
        if (!o || (ids && o->id != ids[i]))
            continue;
        if (l1_evictable_locked(o, now))
            obj_free(l1, o);
        else if (force)
            obj_make_pending(l1, o); /* freed when its last holder unlocks */
        else
            continue;
        done++;
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}
