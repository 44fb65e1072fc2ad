/*
 * items.h - the item index in the shared segment: (64-bit key -> an item in
 * the data area), for the rows of tensors cached by rows and, later, other
 * small values (see layout.h "Item store" for the on-shm format and the
 * seqlock protocol).
 *
 * Two-choice bucketized hashing: a key lives in one of its two buckets
 * (b1, b2), 7 slots each; a bucket is one cache line with its own seqlock.
 * A lookup reads b1 and, when the key is not there, b2: at most two cache
 * lines of index and the item itself. There is no displacement: when both
 * buckets are full the insert fails with EC_ENOSPC and the daemon evicts one
 * of their items first (the table is sized so that this is rare).
 *
 * Readers (clients, on read-only mappings, any thread; the daemon too) call
 * ec_item_lookup/ec_item_probe and, after copying the value,
 * ec_item_still_valid(); they never write and never block. A reader may miss
 * an item the daemon is writing (a false miss is safe: it asks the daemon);
 * a false hit is impossible: the whole key is compared at the item.
 *
 * Writer: the daemon's server thread alone calls ec_item_insert/remove/clear
 * on its writable mapping.
 */
#ifndef EC_SHM_ITEMS_H
#define EC_SHM_ITEMS_H

#include <stdbool.h>
#include <stdint.h>

#include "common/hash.h"
#include "segment.h"

/* Where a key may be: its two buckets and its tag. */
typedef struct ec_item_hash {
    uint64_t b1, b2;
    uint32_t tag;
} ec_item_hash;

/* A reader's snapshot of one item: the bucket and the sequence it had. */
typedef struct ec_item_ref {
    const ec_item_bucket *bucket;
    uint64_t seq;     /* even sequence observed */
    uint64_t off;     /* the item (its key) from the data area; 8-aligned, and
                       * off + 8 + value_bytes <= data_size (checked) */
} ec_item_ref;

/* [0, n) from a 64-bit hash, without a division (Lemire's fast range). */
static inline uint64_t ec_item_range(uint64_t h, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)h * n) >> 64);
}

static inline void ec_item_hash_of(uint64_t nbuckets, uint64_t key, ec_item_hash *h)
{
    uint64_t a = ec_mix64(key), b = ec_mix64(a ^ 0x9e3779b97f4a7c15ull);

    h->b1 = ec_item_range(a, nbuckets);
    h->b2 = ec_item_range(b, nbuckets);
    if (h->b2 == h->b1 && nbuckets > 1)
        h->b2 = h->b1 + 1 == nbuckets ? 0 : h->b1 + 1;
    h->tag = (uint32_t)(a & EC_ITEM_TAG_MASK);
    if (h->tag == 0)
        h->tag = 1;
}

/* Hint the CPU to load a key's first bucket (a batch of lookups overlaps
 * its cache misses this way). */
static inline void ec_item_prefetch(const ec_segment *seg, const ec_item_hash *h)
{
    if (seg->item_buckets)
        __builtin_prefetch(&seg->items[h->b1]);
}

/* The key stored at an item (a plain read of shared memory: only trusted
 * once the bucket's sequence has been checked again). */
static inline uint64_t ec_item_key_at(const ec_segment *seg, uint64_t off)
{
    return atomic_load_explicit((const _Atomic uint64_t *)(const void *)(seg->data + off),
                                memory_order_relaxed);
}

/* The value of the item at off. */
static inline const uint8_t *ec_item_value(const ec_segment *seg, uint64_t off)
{
    return seg->data + off + 8;
}

/* Look up key, whose value is value_bytes long. Returns 1 and fills *ref on
 * a hit (the key at the item matched, bounds checked), 0 on a miss.
 * Lock-free; spins briefly on a bucket being written. */
int ec_item_lookup(const ec_segment *seg, uint64_t key, uint64_t value_bytes, ec_item_ref *ref);

/* The fast half of a lookup, for batches: the first slot whose tag matches
 * in b1, then b2, read under the bucket's seqlock, with the item's bounds
 * checked but its key NOT compared (the caller prefetches the item, then
 * compares ec_item_key_at(seg, ref->off) with the key, and falls back to
 * ec_item_lookup when it differs). Returns 1 with *ref, 0 when no slot of
 * either bucket carries the tag (a miss). */
int ec_item_probe(const ec_segment *seg, const ec_item_hash *h, uint64_t value_bytes,
                  ec_item_ref *ref);

/* After copying the value: true if the bucket did not change since the
 * lookup, so the item was not replaced and the copy is not torn. */
static inline bool ec_item_still_valid(const ec_item_ref *ref)
{
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&ref->bucket->seq, memory_order_relaxed) == ref->seq;
}

/* Daemon: publish key -> the item at off (its key and value already
 * written). EC_EEXIST when the key is present, EC_ENOSPC when both of its
 * buckets are full (evict one of ec_item_neighbours() and retry),
 * EC_EINVAL for a misaligned or out-of-bounds offset or key 0. */
int ec_item_insert(ec_segment *seg, uint64_t key, uint64_t off);

/* Daemon: unpublish key if it points at off, bumping its bucket's
 * sequence. 0, or EC_ENOENT. */
int ec_item_remove(ec_segment *seg, uint64_t key, uint64_t off);

/* Daemon: the items sharing key's two buckets (up to 2 * EC_ITEM_WAYS
 * offsets), for choosing a victim when an insert found both full. Returns
 * how many it wrote. */
unsigned ec_item_neighbours(const ec_segment *seg, uint64_t key,
                            uint64_t offs[2 * EC_ITEM_WAYS]);

/* Daemon: call fn for every published item (warm restart). Stops and
 * returns fn's value when non-zero. fn must not insert or remove. */
int ec_item_foreach(const ec_segment *seg, int (*fn)(uint64_t key, uint64_t off, void *arg),
                    void *arg);

/* Daemon: empty the whole item index (bumping every bucket's sequence). */
void ec_item_clear(ec_segment *seg);

/* Published items (a scan; for tests and stats). */
uint64_t ec_item_count(const ec_segment *seg);

#endif
