/*
 * dyntable.h - a dynamic table in the shared segment: rows keyed by
 * arbitrary int64 keys that the daemon inserts, updates and deletes while
 * other processes read them, with no lock and no system call.
 *
 * A table is one extent of the data area, published in the partition index
 * as (tensor, EC_DYN_PART): a reader looks that entry up, reads rows, and
 * checks the entry's seqlock once per batch, so a table the daemon drops
 * (its extent removed from the index before it is freed) is never read
 * after reuse. Inside the extent:
 *
 *   0            ec_dyn_header (one 4 KiB page)
 *   buckets_off  nbuckets buckets of 8 words (64 bytes each)
 *   slots_off    nslots slots of slot_bytes: ec_dyn_slot, then the row
 *
 * Keys map to slots through the buckets: a key lives in one of its two
 * buckets (b1, b2 from its hash), in a word (tag << 40 | slot + 1) with a
 * 24-bit tag from the hash; the slot holds the key in full, which a reader
 * compares (a tag collision is never a false hit). A key never moves
 * between buckets while it is present, and a word is written with one
 * atomic store, so a reader needs no bucket lock: a key present for the
 * whole lookup is always found.
 *
 * Updates never write a row a reader may be reading (the hot-row case a
 * seqlock per row starves): an update writes the new row into a free slot,
 * then swaps the key's word to it (one atomic store); the old slot goes to
 * the tail of a FIFO of free slots and is rewritten only after every other
 * free slot was (nslots - capacity >= EC_DYN_SPARE_MIN of them). Each slot
 * has a sequence (seqlock) that the daemon makes odd while it writes the
 * slot: a reader that copied a row checks that the sequence did not move,
 * which fails only if the slot was reused during the copy (after at least
 * EC_DYN_SPARE_MIN other updates), and then looks the key up again. So a
 * row written nonstop is read at full speed: each read finds a slot that
 * will not be written for a while.
 *
 *   writer (daemon): slot.seq += 1 (odd); release fence; write key, row,
 *                    lsn, live = 1; slot.seq += 1 (even, release); then
 *                    store the word (release).  Free: live = 0 (relaxed),
 *                    the slot joins the FIFO; nothing a reader relies on
 *                    moves.
 *   reader:          w = word (acquire); slot = w's; s1 = slot.seq
 *                    (acquire), odd -> look up again; key == slot.key or
 *                    try the next word; copy the row (and lsn); acquire
 *                    fence; slot.seq == s1 or look up again.
 *
 * Each slot records the lsn (write-ahead log sequence) of the update that
 * wrote it: the batch's lsn for an update (and for its replay at start),
 * the table's base lsn for a row loaded from its base version. The
 * header's lsn is stored with release after a batch's slots and words are
 * written, so a reader that loads it (acquire) and then scans the slots
 * sees every row of the batches up to it, and every slot written since
 * holds a larger lsn. The approximate index of a table (client_index.c,
 * client_dynivf.c) keeps the header lsn its build started at and treats
 * the slots above it as not indexed. A snapshot folds rows into a base
 * without their lsns: after a restart they all carry the base's.
 *
 * Readers: any process that maps the segment, any thread (ec_dyn_view_open,
 * ec_dyn_find). Writer: the daemon's server thread (core/dyntable.c), with
 * the ec_dyn_*_w functions below.
 */
#ifndef EC_SHM_DYNTABLE_H
#define EC_SHM_DYNTABLE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/hash.h"
#include "segment.h"

#define EC_DYN_MAGIC 0x314e5944434d4545ULL /* "EEMCDYN1" */
#define EC_DYN_VERSION 1u
#define EC_DYN_PART 0xffffffffu     /* its partition index entry: (tensor, EC_DYN_PART) */
#define EC_DYN_WAYS 8u
#define EC_DYN_SLOT_BITS 40u
#define EC_DYN_SLOT_MASK ((1ull << EC_DYN_SLOT_BITS) - 1)
#define EC_DYN_SPARE_MIN 1024u      /* free slots an update chooses among, at least */
#define EC_DYN_CAPACITY_MAX (1ull << 36)

typedef struct ec_dyn_header {
    /* Written once when the table is laid out. */
    uint64_t magic;
    uint32_t version;
    uint32_t tensor;              /* the catalog tensor id */
    uint64_t region_bytes;        /* the whole extent */
    uint64_t nbuckets;            /* a power of two */
    uint64_t nslots;              /* capacity + spare */
    uint64_t capacity;            /* keys at most */
    uint64_t row_bytes;
    uint64_t slot_bytes;          /* sizeof(ec_dyn_slot) + row_bytes, 32-aligned */
    uint64_t buckets_off, slots_off; /* from the extent's start */
    uint64_t salt;                /* of the key hash */
    uint8_t reserved0[40];
    /* Daemon-maintained gauges (relaxed), for stats. */
    _Atomic uint64_t live;        /* keys present */
    _Atomic uint64_t lsn;         /* the last update applied (its WAL sequence) */
    _Atomic uint64_t puts, deletes, evictions;
    uint8_t reserved1[88];
} ec_dyn_header;

_Static_assert(sizeof(ec_dyn_header) == 256, "dynamic table header is 256 bytes");

typedef struct ec_dyn_bucket {
    _Atomic uint64_t word[EC_DYN_WAYS]; /* 0, or tag << 40 | (slot + 1) */
} ec_dyn_bucket;

_Static_assert(sizeof(ec_dyn_bucket) == 64, "a bucket is one cache line");

typedef struct ec_dyn_slot {
    _Atomic uint64_t seq;         /* even: stable; odd: being written */
    _Atomic int64_t key;
    _Atomic uint64_t live;        /* 1 while a key's word points here (scans) */
    _Atomic uint64_t lsn;         /* the update that wrote the slot (its WAL lsn);
                                   * written by the daemon before seq goes even,
                                   * read by readers inside the seq check */
    /* the row, row_bytes */
} ec_dyn_slot;

_Static_assert(sizeof(ec_dyn_slot) == 32, "slot header is 32 bytes");

/* A reader's validated view of a table. */
typedef struct ec_dyn_view {
    const ec_dyn_header *hdr;
    const ec_dyn_bucket *buckets;
    const uint8_t *slots;
    uint64_t nbuckets, nslots, slot_bytes, row_bytes, capacity, salt;
} ec_dyn_view;

/* Where a key may be. */
typedef struct ec_dyn_hash {
    uint64_t b1, b2;
    uint64_t tag;
} ec_dyn_hash;

static inline void ec_dyn_hash_of(uint64_t nbuckets, uint64_t salt, int64_t key, ec_dyn_hash *h)
{
    uint64_t a = ec_mix64((uint64_t)key ^ salt), b = ec_mix64(a ^ 0x9e3779b97f4a7c15ull);

    h->b1 = a & (nbuckets - 1);
    h->b2 = b & (nbuckets - 1);
    if (h->b2 == h->b1 && nbuckets > 1)
        h->b2 = (h->b1 + 1) & (nbuckets - 1);
    h->tag = (a >> 40) & 0xffffffull;
    if (h->tag == 0)
        h->tag = 1;
}

static inline const ec_dyn_slot *ec_dyn_slot_at(const ec_dyn_view *v, uint64_t slot)
{
    return (const ec_dyn_slot *)(const void *)(v->slots + slot * v->slot_bytes);
}

/* Prefetch slot's header and row (a read soon to come of a slot the caller
 * knows, as a scan of known slots does). */
static inline void ec_dyn_slot_prefetch(const ec_dyn_view *v, uint64_t slot)
{
    const uint8_t *p = (const uint8_t *)ec_dyn_slot_at(v, slot);

    for (uint64_t o = 0; o < v->slot_bytes; o += 64)
        __builtin_prefetch(p + o);
}

static inline void ec_dyn_prefetch(const ec_dyn_view *v, int64_t key)
{
    ec_dyn_hash h;

    ec_dyn_hash_of(v->nbuckets, v->salt, key, &h);
    __builtin_prefetch(&v->buckets[h.b1]);
}

/* The table at data offset off (its index entry's), checked against the
 * segment and what the caller expects of it (tensor, row_bytes; 0: any).
 * 0, or EC_ECORRUPT naming what is wrong. */
int ec_dyn_view_open(const ec_segment *seg, uint64_t off, uint32_t tensor, uint64_t row_bytes,
                     ec_dyn_view *v);

/* Copy key's row into out (row_bytes). 1 when found, 0 when absent.
 * Retries a copy whose slot was reused under it; *retries (may be NULL) is
 * increased by how many times. EC_ESTALE when a slot stays half-written
 * (a daemon died writing it: re-resolve). */
int ec_dyn_find(const ec_dyn_view *v, int64_t key, void *out, uint64_t *retries);

/* A slot's row and key if it holds a live key, copied consistently: for
 * scans (search, snapshot). 1 with *key and out, 0 for a free slot (or
 * one a newer copy of its key replaced), EC_ESTALE as ec_dyn_find. */
int ec_dyn_slot_read(const ec_dyn_view *v, uint64_t slot, int64_t *key, void *out);

/* A slot's header alone, without its row (the delta scan of an indexed
 * table: cheap). 1 with *lsn when it holds a key (which may have moved to a
 * newer slot since: read it with ec_dyn_slot_read), 0 for a free slot.
 * A slot being written counts as holding a key with *lsn = UINT64_MAX
 * (newer than anything). Never waits. */
int ec_dyn_slot_peek(const ec_dyn_view *v, uint64_t slot, uint64_t *lsn);

/* Whether key is present, and the lsn of the slot holding it, without
 * copying its row: 1 with *lsn, 0 when absent, EC_ESTALE as ec_dyn_find. */
int ec_dyn_key_lsn(const ec_dyn_view *v, int64_t key, uint64_t *lsn);

/* ec_dyn_key_lsn for n <= EC_DYN_BATCH keys: found[i] 1 (with lsn[i], when
 * lsn is not NULL, and the key's row at out + i * row_bytes, when out is
 * not NULL) or 0. The keys' buckets, then the slots their words point at,
 * are prefetched for all of them before any is read, so the cache misses
 * of the lookups overlap instead of following one another. 0, or
 * EC_ESTALE as ec_dyn_find (for the first key that stays half-written). */
#define EC_DYN_BATCH 16u
int ec_dyn_find_many(const ec_dyn_view *v, const int64_t *keys, size_t n, int *found,
                     uint64_t *lsn, void *out);

/* ---- writer (daemon) ---------------------------------------------- */

/* Bytes of a table of capacity keys of row_bytes, and its geometry. */
uint64_t ec_dyn_region_bytes(uint64_t capacity, uint64_t row_bytes, uint64_t *nbuckets,
                             uint64_t *nslots, uint64_t *slot_bytes);

/* Lay out an empty table in the extent at base (region_bytes of it, as
 * ec_dyn_region_bytes said). The caller publishes it in the index after. */
void ec_dyn_init_w(void *base, uint32_t tensor, uint64_t capacity, uint64_t row_bytes,
                   uint64_t salt);

/* Writable pointers into a table the daemon laid out. */
static inline ec_dyn_bucket *ec_dyn_bucket_w(const ec_dyn_view *v, uint64_t b)
{
    return (ec_dyn_bucket *)(uintptr_t)&v->buckets[b];
}

static inline ec_dyn_slot *ec_dyn_slot_w(const ec_dyn_view *v, uint64_t slot)
{
    return (ec_dyn_slot *)(uintptr_t)ec_dyn_slot_at(v, slot);
}

/* Write key, row and the lsn of the update into a free slot (seqlocked;
 * live set). */
void ec_dyn_slot_write_w(const ec_dyn_view *v, uint64_t slot, int64_t key, const void *row,
                         uint64_t lsn);

/* The word of key, if present: *bucket and *way say where. */
bool ec_dyn_locate_w(const ec_dyn_view *v, int64_t key, uint64_t *bucket, unsigned *way,
                     uint64_t *slot);

/* A free way for a new key: in the less full of its two buckets. false
 * when both are full. */
bool ec_dyn_free_way_w(const ec_dyn_view *v, int64_t key, uint64_t *bucket, unsigned *way);

/* Point (bucket, way) at slot for key (release), or clear it (slot
 * UINT64_MAX). */
void ec_dyn_word_set_w(const ec_dyn_view *v, int64_t key, uint64_t bucket, unsigned way,
                       uint64_t slot);

#endif
