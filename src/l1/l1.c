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

/* ---- lists ----------------------------------------------------------------
 * Circular lists with a sentinel per list (l1->head_*): the LRU links slots
 * (l1->lru), the resv, locked and pending lists link activity records
 * (l1->acts[].q). */

enum l1_which { L_LRU, L_Q };

#define L1_INLINE static inline __attribute__((always_inline))

L1_INLINE struct l1_link *lnk(struct l1 *l1, uint32_t i, enum l1_which w)
{
    return w == L_LRU ? &l1->lru[i] : &l1->acts[i].q;
}

static void list_init(struct l1 *l1, enum l1_which w, uint32_t h)
{
    *lnk(l1, h, w) = (struct l1_link){ h, h };
}

L1_INLINE void list_append(struct l1 *l1, enum l1_which w, uint32_t h, uint32_t n)
{
    struct l1_link *hl = lnk(l1, h, w), *nl = lnk(l1, n, w);
    uint32_t tail = hl->prev;
    nl->prev = tail;
    nl->next = h;
    lnk(l1, tail, w)->next = n;
    hl->prev = n;
}

L1_INLINE void list_del(struct l1 *l1, enum l1_which w, uint32_t n)
{
    struct l1_link *nl = lnk(l1, n, w);
    uint32_t prev = nl->prev, next = nl->next;
    if (next == L1_NIL)
        return;
    lnk(l1, prev, w)->next = next;
    lnk(l1, next, w)->prev = prev;
    nl->prev = nl->next = L1_NIL;
}

/* ---- activity records ------------------------------------------------------
 * See struct l1_act. act_take cannot fail: the pool has one per slot. */

L1_INLINE struct l1_act *act_of(struct l1 *l1, const struct l1_obj *o)
{
    return &l1->acts[o->act];
}

/* A record for o, not on a list yet; `word` is the writer or lock epoch. */
L1_INLINE struct l1_act *act_take(struct l1 *l1, struct l1_obj *o, uint64_t expiry_ns,
                                  uint64_t word, uint32_t holders)
{
    uint32_t i = l1->act_free;
    if (i != L1_NIL)
        l1->act_free = l1->acts[i].q.next;
    else
        i = (uint32_t)l1->acts_used++; /* a fresh record: its page is touched only now */
    l1->acts[i] = (struct l1_act){ .expiry_ns = expiry_ns, .writer = word, .q = { L1_NIL, L1_NIL },
                                   .slot = l1_slot_of(l1, o), .holders = holders };
    o->act = i;
    return &l1->acts[i];
}

/* o's record, off every list already. */
L1_INLINE void act_put(struct l1 *l1, struct l1_obj *o)
{
    l1->acts[o->act].q.next = l1->act_free; /* q.prev of a free record is never read */
    l1->act_free = o->act;
    o->act = L1_NIL;
}

/* The object whose record is first on list h, or NULL when it is empty. */
L1_INLINE struct l1_obj *q_first(struct l1 *l1, uint32_t h)
{
    uint32_t i = l1->acts[h].q.next;
    return i == h ? NULL : &l1->objs[l1->acts[i].slot];
}

/* ---- hash index -----------------------------------------------------------
 * Chains of slot indices; the key itself is read from the object's table
 * entry in the segment, only when the 32-bit hash in the record matches. */

static uint64_t key_hash(const struct l1_key *k) { return XXH3_64bits(k, sizeof(*k)); }

static const struct l1_key *key_of(const struct l1 *l1, uint32_t slot)
{
    return &l1->table[slot].key;
}

/* memcmp of a constant 48 bytes compiles to a few vector compares. */
static inline bool key_eq(const struct l1_key *a, const struct l1_key *b)
{
    return memcmp(a, b, sizeof(*a)) == 0;
}

L1_INLINE struct l1_obj *index_find(struct l1 *l1, const struct l1_key *k)
{
    uint32_t h = (uint32_t)key_hash(k);
    const struct l1_obj *objs = l1->objs;
    for (uint32_t i = l1->buckets[h & (l1->nb - 1)]; i != L1_NIL; i = objs[i].hnext)
        if (objs[i].hash == h && key_eq(key_of(l1, i), k))
            return &l1->objs[i];
    return NULL;
}

static uint32_t *buckets_new(uint64_t nb)
{
    uint32_t *b = malloc(nb * sizeof(*b));
    if (b)
        memset(b, 0xff, nb * sizeof(*b)); /* L1_NIL */
    return b;
}

/* Doubles the bucket array; on malloc failure keeps the old one (longer
 * chains). Chains are rebuilt from the hashes in the records: the table
 * in the segment is never trusted for the index's shape. */
static void index_grow(struct l1 *l1)
{
    uint64_t nb = l1->nb * 2;
    if (nb > (1ull << 32))
        return;
    uint32_t *b = buckets_new(nb);
    if (!b)
        return;
    for (uint64_t i = 0; i < l1->nb; i++) {
        uint32_t s = l1->buckets[i];
        while (s != L1_NIL) {
            struct l1_obj *o = &l1->objs[s];
            uint32_t next = o->hnext;
            o->hnext = b[o->hash & (nb - 1)];
            b[o->hash & (nb - 1)] = s;
            s = next;
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
    uint32_t *b = &l1->buckets[o->hash & (l1->nb - 1)];
    o->hnext = *b;
    *b = l1_slot_of(l1, o);
    l1->count++;
}

static void index_remove(struct l1 *l1, struct l1_obj *o)
{
    uint32_t s = l1_slot_of(l1, o);
    uint32_t *p = &l1->buckets[o->hash & (l1->nb - 1)];
    while (*p != s)
        p = &l1->objs[*p].hnext;
    *p = o->hnext;
    o->hnext = L1_NIL;
    l1->count--;
}

/* ---- slots ---------------------------------------------------------------- */

/* The slot the next slot_take returns (n_free_slots > 0). */
static uint32_t slot_peek(const struct l1 *l1)
{
    return l1->free_head != L1_NIL ? l1->free_head : (uint32_t)l1->slots_used;
}

static struct l1_obj *slot_take(struct l1 *l1)
{
    uint32_t s = slot_peek(l1);
    if (s == l1->free_head)
        l1->free_head = l1->objs[s].hnext;
    else
        l1->slots_used++; /* a fresh slot: its record page is touched only now */
    l1->n_free_slots--;
    return &l1->objs[s];
}

static void slot_put(struct l1 *l1, struct l1_obj *o)
{
    *o = (struct l1_obj){ .state = L1_OBJ_FREE, .hnext = l1->free_head, .act = L1_NIL };
    l1->free_head = l1_slot_of(l1, o);
    l1->n_free_slots++;
}

static uint64_t obj_alloc_bytes(const struct l1 *l1, const struct l1_obj *o)
{
    return l1_alloc_round(&l1->alloc, l1_obj_length(o));
}

static uint64_t obj_offset(const struct l1 *l1, const struct l1_obj *o)
{
    return l1_alloc_off(&l1->alloc, l1_slot_of(l1, o));
}

/* ---- object table in the segment ----------------------------------------- */

/* A new reservation's entry: key, place, then the state. */
static void table_reserve(struct l1 *l1, const struct l1_obj *o, const struct l1_key *k)
{
    uint32_t s = l1_slot_of(l1, o);
    struct l1_seg_entry *e = &l1->table[s];
    e->key = *k;
    e->length = l1_obj_length(o);
    e->offset_units = l1->alloc.u[s].off;
    /* A reader of the table (warm restart) trusts READY only once the
     * fields above are in place. */
    __atomic_store_n(&e->state, (uint32_t)L1_SEG_RESERVED, __ATOMIC_RELEASE);
}

static void table_write(struct l1 *l1, const struct l1_obj *o, enum l1_seg_state state)
{
    __atomic_store_n(&l1->table[l1_slot_of(l1, o)].state, (uint32_t)state, __ATOMIC_RELEASE);
}

/* ---- object lifecycle ----------------------------------------------------- */

/* Takes o's record off its resv / locked / pending list and that list's count. */
L1_INLINE void q_leave(struct l1 *l1, struct l1_obj *o)
{
    if (o->state == L1_OBJ_RESERVED)
        l1->n_resv--;
    else if (o->state == L1_OBJ_READY)
        l1->n_locked--;
    else
        l1->n_pending--;
    list_del(l1, L_Q, o->act);
}

/* Takes o off its resv / locked / pending list and frees its record. */
L1_INLINE void act_drop(struct l1 *l1, struct l1_obj *o)
{
    q_leave(l1, o);
    act_put(l1, o);
}

/* Unlinks o from every structure, frees its extent and table slot. */
static void obj_free(struct l1 *l1, struct l1_obj *o)
{
    uint32_t s = l1_slot_of(l1, o);
    if (o->state != L1_OBJ_PENDING)
        index_remove(l1, o);
    if (o->state == L1_OBJ_READY)
        list_del(l1, L_LRU, s);
    if (o->act != L1_NIL)
        act_drop(l1, o);
    table_write(l1, o, L1_SEG_FREE);
    l1_alloc_put(&l1->alloc, s, l1_obj_length(o));
    slot_put(l1, o);
}

/* A READY object has a record only while it has holders (maybe expired). */
bool l1_evictable_locked(const struct l1 *l1, const struct l1_obj *o, uint64_t now)
{
    return o->state == L1_OBJ_READY && o->pins == 0 &&
           (o->act == L1_NIL || l1->acts[o->act].expiry_ns <= now);
}

void l1_evict_obj_locked(struct l1 *l1, struct l1_obj *o)
{
    l1->st.evicted_count++;
    l1->st.evicted_bytes += obj_alloc_bytes(l1, o);
    obj_free(l1, o);
}

/* The holders of o (READY, or PENDING that was READY; it has a record)
 * expired or left: a READY object becomes unlocked and gives its record
 * back, a PENDING one keeps it (it stays on pending). */
L1_INLINE void drop_holders(struct l1 *l1, struct l1_obj *o)
{
    struct l1_act *a = act_of(l1, o);
    if (a->holders)
        l1->st.expired_read_locks++; /* readers that never released: a metric to alert on */
    a->holders = 0;
    if (o->state == L1_OBJ_READY)
        act_drop(l1, o);
}

void l1_settle_locked(struct l1 *l1, uint64_t now)
{
    struct l1_obj *o;
    while ((o = q_first(l1, l1->head_resv)) && act_of(l1, o)->expiry_ns <= now) {
        l1->st.expired_reservations++;
        obj_free(l1, o);
    }
    while ((o = q_first(l1, l1->head_locked)) && act_of(l1, o)->expiry_ns <= now)
        drop_holders(l1, o);
    uint32_t h = l1->head_pending;
    for (uint32_t i = l1->acts[h].q.next, next; i != h; i = next) {
        struct l1_act *a = &l1->acts[i];
        next = a->q.next;
        o = &l1->objs[a->slot];
        if (o->pins == 0 &&
            (a->expiry_ns <= now || (!(o->flags & L1_OBJ_WAS_RESERVED) && a->holders == 0)))
            obj_free(l1, o);
    }
}

/* Removes o from the index after clear(true) while someone may still use
 * its bytes; it is freed when they finish or its TTL runs out. */
static void obj_make_pending(struct l1 *l1, struct l1_obj *o)
{
    index_remove(l1, o);
    if (o->state == L1_OBJ_READY)
        list_del(l1, L_LRU, l1_slot_of(l1, o));
    if (o->act == L1_NIL)
        act_take(l1, o, 0, 0, 0); /* READY without holders: no expiry, no epoch */
    else
        q_leave(l1, o);
    if (o->state == L1_OBJ_RESERVED)
        o->flags |= L1_OBJ_WAS_RESERVED;
    else
        o->flags &= (uint8_t)~L1_OBJ_WAS_RESERVED;
    o->state = L1_OBJ_PENDING;
    list_append(l1, L_Q, l1->head_pending, o->act);
    l1->n_pending++;
    table_write(l1, o, L1_SEG_PENDING_FREE);
}

static struct l1_obj *pending_find(struct l1 *l1, const struct l1_key *k, uint64_t id,
                                   bool match_id, bool want_reserved)
{
    uint32_t h = l1->head_pending;
    for (uint32_t i = l1->acts[h].q.next; i != h; i = l1->acts[i].q.next) {
        uint32_t s = l1->acts[i].slot;
        struct l1_obj *o = &l1->objs[s];
        if (!(o->flags & L1_OBJ_WAS_RESERVED) != !want_reserved)
            continue;
        if (match_id ? o->id == id : key_eq(key_of(l1, s), k))
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
    if (entries > L1_MAX_SLOTS) {
        /* object links are 32-bit slot indices (l1_internal.h) */
        log_error("L1 object table of %" PRIu64 " entries is more than the %u objects lmcd's "
                  "32-bit object links address; lower max_objects",
                  entries, (unsigned)L1_MAX_SLOTS);
        return -EINVAL;
    }
    if (entries > o->size_bytes / sizeof(struct l1_seg_entry))
        goto small;
    uint64_t table = round_up(entries * sizeof(struct l1_seg_entry), a);
    if (hdr + table >= o->size_bytes)
        goto small;
    uint64_t data = (o->size_bytes - hdr - table) & ~(o->align_bytes - 1);
    if (data < o->align_bytes)
        goto small;
    if (data / o->align_bytes > UINT32_MAX) {
        /* extents are 32-bit offsets in align units (l1_alloc.h) */
        uint64_t need = o->align_bytes;
        while (data / need > UINT32_MAX)
            need *= 2;
        log_error("L1 data area of %" PRIu64 " bytes is more than 2^32 units of align_bytes %" PRIu64
                  " (lmcd's 32-bit extent offsets); raise --l1-align-bytes to at least %" PRIu64,
                  data, o->align_bytes, need);
        return -EINVAL;
    }
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
    l1->next_id = 1;
    l1->next_epoch = 1;
    l1->free_head = L1_NIL;
    l1->act_free = L1_NIL;
    l1->st.read_ttl_s = o->read_ttl_s;
    l1->st.write_ttl_s = o->write_ttl_s;

    if ((rc = plan_layout(l1, &h)) < 0)
        goto fail;
    rc = -ENOMEM;
    l1->nb = L1_MIN_BUCKETS;
    l1->table_entries = h.table_entries;
    /* calloc of a large array maps zero pages: a record costs memory only
     * once its slot is first used (slots and activity records are handed
     * out low first). */
    if (!(l1->buckets = buckets_new(l1->nb)) ||
        !(l1->objs = calloc(h.table_entries, sizeof(*l1->objs))) ||
        !(l1->lru = calloc(h.table_entries + 1, sizeof(*l1->lru))) ||
        !(l1->acts = calloc(h.table_entries + 3, sizeof(*l1->acts))))
        goto fail;
    l1->head_lru = (uint32_t)h.table_entries;
    list_init(l1, L_LRU, l1->head_lru);
    l1->head_resv = (uint32_t)h.table_entries;
    l1->head_locked = l1->head_resv + 1;
    l1->head_pending = l1->head_resv + 2;
    for (uint32_t i = l1->head_resv; i <= l1->head_pending; i++)
        list_init(l1, L_Q, i);
    l1->n_free_slots = h.table_entries;
    if ((rc = l1_alloc_init(&l1->alloc, h.data_offset, h.data_bytes, o->align_bytes,
                            h.table_entries)) < 0) {
        rc = rc == -E2BIG ? -EINVAL : rc; /* plan_layout refused those already */
        goto fail;
    }
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
    free(l1->objs);
    free(l1->lru);
    free(l1->acts);
    free(l1->buckets);
    free(l1);
    return rc;
}

void l1_destroy(struct l1 *l1)
{
    if (!l1)
        return;
    l1_evict_stop(l1);
    l1_shm_destroy(&l1->shm);
    l1_alloc_fini(&l1->alloc);
    pthread_cond_destroy(&l1->evict_cv);
    pthread_mutex_destroy(&l1->evict_mu);
    pthread_mutex_destroy(&l1->mu);
    free(l1->objs);
    free(l1->lru);
    free(l1->acts);
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

L1_INLINE void ref_with_epoch(const struct l1 *l1, const struct l1_obj *o, uint64_t epoch,
                              struct l1_ref *r)
{
    r->id = o->id;
    r->offset = obj_offset(l1, o);
    r->length = l1_obj_length(o);
    r->lock_epoch = epoch;
    r->slot = l1_slot_of(l1, o) + 1;
    r->reserved_ = 0;
}

/* A READY object's epoch is that of its current holders (0: none); a
 * reservation's record holds the writer in that word, so its ref has 0. */
L1_INLINE void ref_of(struct l1 *l1, const struct l1_obj *o, struct l1_ref *r)
{
    ref_with_epoch(l1, o, o->state == L1_OBJ_READY && o->act != L1_NIL ? act_of(l1, o)->lock_epoch : 0, r);
}

/* ---- writes --------------------------------------------------------------- */

/* Demand eviction state for one reserve_write batch. The cursor walks the
 * LRU list once per batch: only evicted objects leave it meanwhile, and the
 * cursor always moves past an object before it is freed. */
struct room {
    uint32_t cursor;
    bool exhausted;
};

/* Evicts the next evictable object at or after the cursor; false when none. */
static bool evict_next(struct l1 *l1, struct room *rm, uint64_t now)
{
    while (rm->cursor != l1->head_lru) {
        struct l1_obj *o = &l1->objs[rm->cursor];
        rm->cursor = l1->lru[rm->cursor].next;
        if (l1_evictable_locked(l1, o, now)) {
            l1->st.demand_evicted_count++;
            l1_evict_obj_locked(l1, o);
            return true;
        }
    }
    rm->exhausted = true;
    return false;
}

/* A table slot and its extent for `bytes`, evicting on demand (LRU only). */
static int make_room(struct l1 *l1, struct room *rm, uint64_t bytes, uint64_t now,
                     struct l1_obj **out)
{
    uint64_t need = l1_alloc_round(&l1->alloc, bytes);
    for (;;) {
        if (l1->n_free_slots > 0 && l1->alloc.bytes - l1->alloc.used >= need &&
            l1_alloc_get(&l1->alloc, bytes, slot_peek(l1)) == 0) {
            *out = slot_take(l1);
            return 0;
        }
        if (l1->opts.policy != L1_POLICY_LRU || rm->exhausted || !evict_next(l1, rm, now))
            return -ENOMEM;
    }
}

static enum l1_status reserve_one(struct l1 *l1, struct room *rm, const struct l1_key *k,
                                  uint64_t size, uint64_t writer, uint64_t now,
                                  struct l1_ref *ref)
{
    static struct log_ratelimit rl = LOG_RATELIMIT_INIT(60000, 5);
    if (size == 0 || size > l1->alloc.bytes || size > L1_MAX_LENGTH)
        return L1_INVALID;
    struct l1_obj *o = index_find(l1, k);
    if (o && o->state == L1_OBJ_READY)
        return L1_EXISTS;
    if (o && act_of(l1, o)->expiry_ns > now) /* RESERVED */
        return L1_BUSY;
    if (o) {
        /* An abandoned reservation: never published, never readable. */
        l1->st.expired_reservations++;
        obj_free(l1, o);
    }
    if (make_room(l1, rm, size, now, &o) < 0) {
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
    *o = (struct l1_obj){
        .id = l1->next_id++,
        .len_lo = (uint32_t)size,
        .len_hi = (uint16_t)(size >> 32),
        .state = L1_OBJ_RESERVED,
        .hash = (uint32_t)key_hash(k),
        .hnext = L1_NIL,
    };
    l1->lru[l1_slot_of(l1, o)] = (struct l1_link){ L1_NIL, L1_NIL };
    act_take(l1, o, now + l1->write_ttl_ns, writer, 0);
    index_insert(l1, o);
    list_append(l1, L_Q, l1->head_resv, o->act);
    l1->n_resv++;
    table_reserve(l1, o, k);
    ref_of(l1, o, ref);
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
    struct room rm = { l1->lru[l1->head_lru].next, false };
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
    if (o && o->state == L1_OBJ_RESERVED && o->id == id && act_of(l1, o)->writer == writer) {
        if (act_of(l1, o)->expiry_ns > now)
            return o;
        l1->st.expired_reservations++;
        obj_free(l1, o);
        *why = L1_EXPIRED;
        return NULL;
    }
    struct l1_obj *p = pending_find(l1, k, id, true, true);
    if (p && act_of(l1, p)->writer == writer)
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
            act_drop(l1, o); /* RESERVED: off resv; READY starts without holders */
            o->state = L1_OBJ_READY;
            list_append(l1, L_LRU, l1->head_lru, l1_slot_of(l1, o));
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
    for (uint32_t h = l1->head_resv, i = l1->acts[h].q.next, next; i != h; i = next) {
        struct l1_act *a = &l1->acts[i];
        next = a->q.next;
        if (a->writer == writer) {
            obj_free(l1, &l1->objs[a->slot]);
            done++;
        }
    }
    for (uint32_t h = l1->head_pending, i = l1->acts[h].q.next, next; i != h; i = next) {
        struct l1_act *a = &l1->acts[i];
        next = a->q.next;
        struct l1_obj *o = &l1->objs[a->slot];
        if ((o->flags & L1_OBJ_WAS_RESERVED) && a->writer == writer)
            obj_free(l1, o);
    }
    pthread_mutex_unlock(&l1->mu);
    return done;
}

/* ---- reads ---------------------------------------------------------------- */

/* Returns the lock epoch of the run of holders the lock joined. */
L1_INLINE uint64_t lock_obj(struct l1 *l1, struct l1_obj *o, uint32_t readers, uint64_t now)
{
    uint64_t epoch;
    if (o->act != L1_NIL && act_of(l1, o)->expiry_ns <= now)
        drop_holders(l1, o); /* an expired lock restarts from zero */
    uint64_t expiry = now + l1->read_ttl_ns;
    if (o->act == L1_NIL) {
        /* A new run of holders: late releases of an old run are ignored. */
        epoch = l1->next_epoch++;
        act_take(l1, o, expiry, epoch, readers);
        l1->n_locked++;
    } else {
        struct l1_act *a = act_of(l1, o);
        epoch = a->lock_epoch;
        list_del(l1, L_Q, o->act);
        uint64_t h = (uint64_t)a->holders + readers;
        a->holders = h > UINT32_MAX ? UINT32_MAX : (uint32_t)h;
        a->expiry_ns = expiry;
    }
    /* Moving to the tail keeps `locked` in expiry order. */
    list_append(l1, L_Q, l1->head_locked, o->act);
    return epoch;
}

L1_INLINE struct l1_obj *ready_find(struct l1 *l1, const struct l1_key *k)
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
        uint64_t epoch = lock_obj(l1, o, readers, now);
        if (refs)
            ref_with_epoch(l1, o, epoch, &refs[i]);
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
        uint64_t epoch = lock_obj(l1, o, readers, now);
        if (refs)
            ref_with_epoch(l1, o, epoch, &refs[i]);
    }
    pthread_mutex_unlock(&l1->mu);
    return rc;
}

/* Drops holders from a READY or PENDING object; true when some were held. */
static bool unlock_obj(struct l1 *l1, struct l1_obj *o, uint32_t readers, uint64_t now)
{
    if (o->act == L1_NIL)
        return false; /* READY without holders */
    struct l1_act *a = act_of(l1, o);
    if (a->holders == 0 || a->expiry_ns <= now)
        return false; /* expired: the lock already let go of everyone */
    a->holders = a->holders > readers ? a->holders - readers : 0;
    if (a->holders == 0) {
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

/* held_find for a ref: a ref from L1 names its slot, and an object never
 * moves and ids are never reused, so the record alone answers (no key is
 * read from the segment: see l1_unpin in l1.h). A ref the caller built
 * (slot 0) goes by key. */
static struct l1_obj *held_find_ref(struct l1 *l1, const struct l1_key *k, const struct l1_ref *r)
{
    if (r->slot == 0 || r->slot > l1->table_entries)
        return held_find(l1, k, &r->id);
    struct l1_obj *o = &l1->objs[r->slot - 1];
    if (o->id != r->id)
        return NULL; /* gone */
    if (o->state == L1_OBJ_READY || (o->state == L1_OBJ_PENDING && !(o->flags & L1_OBJ_WAS_RESERVED)))
        return o;
    return NULL;
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
        struct l1_obj *o = held_find_ref(l1, &keys[i], &refs[i]);
        if (o && o->act != L1_NIL && act_of(l1, o)->lock_epoch == refs[i].lock_epoch &&
            unlock_obj(l1, o, readers, now))
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
        if (o->pins == UINT32_MAX || (o->pins == 0 && l1->pinned_bytes + obj_alloc_bytes(l1, o) > max_pinned_bytes)) {
            over = true;
            break;
        }
        if (o->pins++ == 0) {
            l1->n_pinned++;
            l1->pinned_bytes += obj_alloc_bytes(l1, o);
        }
        ref_of(l1, o, &refs[i]);
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
        struct l1_obj *o = held_find_ref(l1, &keys[i], &refs[i]);
        if (!o || !o->pins)
            continue; /* cannot happen: a pinned object is never freed */
        if (--o->pins == 0) {
            l1->n_pinned--;
            l1->pinned_bytes -= obj_alloc_bytes(l1, o);
            /* removed by a forced clear meanwhile: free it once nothing holds it */
            if (o->state == L1_OBJ_PENDING &&
                (act_of(l1, o)->holders == 0 || act_of(l1, o)->expiry_ns <= now))
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
        ref_of(l1, o, ref);
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
            list_del(l1, L_LRU, l1_slot_of(l1, o));
            list_append(l1, L_LRU, l1->head_lru, l1_slot_of(l1, o));
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
    for (uint32_t h = l1->head_lru, i = l1->lru[h].next, next; i != h; i = next) {
        struct l1_obj *o = &l1->objs[i];
        next = l1->lru[i].next;
        if (l1_evictable_locked(l1, o, now))
            obj_free(l1, o);
        else if (force)
            obj_make_pending(l1, o);
        else
            continue;
        done++;
    }
    if (force) {
        struct l1_obj *o;
        while ((o = q_first(l1, l1->head_resv))) {
            obj_make_pending(l1, o);
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

uint64_t l1_generation(const struct l1 *l1) { return __atomic_load_n(&l1->seg_gen, __ATOMIC_ACQUIRE); }

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
        if (!(o && o->state == L1_OBJ_RESERVED && o->id == ids[i] && act_of(l1, o)->writer == writer))
            o = pending_find(l1, &keys[i], ids[i], true, true);
        struct l1_act *a = o ? act_of(l1, o) : NULL;
        if (!a || a->writer != writer || a->expiry_ns <= now)
            continue;
        a->expiry_ns = now + l1->write_ttl_ns;
        /* the lists are kept in expiry order: move to the tail */
        list_del(l1, L_Q, o->act);
        list_append(l1, L_Q, o->state == L1_OBJ_RESERVED ? l1->head_resv : l1->head_pending,
                    o->act);
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
        if (l1_evictable_locked(l1, o, now))
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
