/*
 * itemstore.h - the daemon's side of the item store: which slots of the
 * segment's data area hold items, and which item goes when room is needed.
 *
 * Items live in slabs: 1 MiB extents of the data area, 1 MiB-aligned, each
 * holding items of one size after a 64-byte header (layout.h). Items of one
 * size form a class with its own eviction state. Memory comes from the
 * engine (slab_alloc, within the budget it keeps for partitions and items
 * together) and goes back to it a whole slab at a time (slab_free).
 *
 * Eviction is S3-FIFO (Yang et al., SOSP 2023) per class: a new item enters
 * a small FIFO queue S (10% of the class); one that was used again while in
 * S moves to the main queue M when it reaches the head of S, one that was
 * not leaves the cache and its key is remembered in a ghost table; a key
 * found in the ghost when it is admitted again goes straight to M. M is a
 * CLOCK over the class's slots with a 2-bit use counter (FIFO-reinsertion).
 * Why S3-FIFO rather than LRU or W-TinyLFU: one-hit wonders (a scan, the
 * tail of a Zipf stream) leave through S without displacing anything in M,
 * so it resists scans; its hit ratio on skewed streams matches or beats LRU
 * (the paper's traces; this project's bench prints an LRU simulation of the
 * same stream beside it); and it needs nothing per hit but a counter bump,
 * which suits hits that are reported as lossy hints from clients' access
 * rings rather than seen by the daemon. Per item the daemon keeps one byte
 * (state and counter), its S queue position while in S, and two bytes of
 * ghost per slot.
 *
 * Publishing is two-phase: ec_items_reserve gives a free slot (evicting when
 * the class is full and cannot grow); the caller writes the key and value
 * there; ec_items_publish puts it in the segment's item index (evicting a
 * neighbour when both of the key's buckets are full) or ec_items_abandon
 * gives the slot back.
 *
 * Every slab header keeps the XOR of the checksums of its published items,
 * so a restarted daemon can re-adopt the items of a slab whose sum still
 * matches (ec_items_adopt) and drop the others.
 *
 * Threads: the daemon's server thread only. It alone writes the item index
 * and the slabs.
 */
#ifndef EC_CORE_ITEMSTORE_H
#define EC_CORE_ITEMSTORE_H

#include <stdbool.h>
#include <stdint.h>

#include "shm/segment.h"

typedef struct ec_itemstore ec_itemstore;

/* How the store gets and returns memory. slab_alloc: a 1 MiB-aligned
 * extent of EC_SLAB_BYTES (offset from the data area) within the budget, or
 * EC_ENOSPC; with may_evict the engine may evict a cold partition to make
 * the room (the store asks that at most once per slab's worth of its own
 * evictions, so partitions and items compete at a slab's pace). slab_free: take one back; its items are unpublished already.
 * valid: may an adopted item of this key and value size be kept (its
 * tensor still exists and is cached by rows with this row size)? */
typedef struct ec_itemstore_env {
    int (*slab_alloc)(void *arg, bool may_evict, uint64_t *off);
    void (*slab_free)(void *arg, uint64_t off);
    bool (*valid)(void *arg, uint64_t key, uint64_t value_bytes);
    void (*evicted)(void *arg, uint64_t key, uint64_t value_bytes); /* may be NULL */
    void *arg;
} ec_itemstore_env;

typedef struct ec_itemstore_stats {
    uint64_t items, slabs, bytes;         /* published items, slabs, their bytes */
    uint64_t admitted, evicted, ghost_hits, promoted, neighbour_evictions;
    uint64_t removed;                     /* by ec_items_remove */
    uint64_t hints, hints_bad;            /* access hints applied / refused */
    uint64_t adopted, adopt_dropped;      /* warm restart */
    uint64_t classes;
    uint64_t value_bytes;                 /* of the published items' values */
    uint64_t heap_bytes;                  /* the daemon's per-item state: meta, ghost, S */
} ec_itemstore_stats;

int ec_items_open(ec_segment *seg, const ec_itemstore_env *env, ec_itemstore **out);
/* Frees the daemon's state; the segment's items stay (warm restart). */
void ec_items_close(ec_itemstore *s);

/* Re-adopt the items a previous daemon left in the segment: every slab
 * whose header and checksum sum are intact and whose items env->valid
 * accepts; the rest are unpublished. Call once, before any reserve, after
 * the caller reserved nothing over the slabs (it reserves them through
 * reserve_slab). */
int ec_items_adopt(ec_itemstore *s, int (*reserve_slab)(void *arg, uint64_t off), void *arg);

/* A free slot for an item whose value has value_bytes (<= EC_ITEM_VALUE_MAX):
 * its offset (of the key) from the data area. EC_ENOSPC when the class is
 * empty and no memory can be had. */
int ec_items_reserve(ec_itemstore *s, uint64_t value_bytes, uint64_t *off);
/* Publish the item written at a reserved slot. EC_EEXIST (the key is there
 * already: the slot is given back). */
int ec_items_publish(ec_itemstore *s, uint64_t key, uint64_t off);
void ec_items_abandon(ec_itemstore *s, uint64_t off);

/* Unpublish key (an item of value_bytes) and free its slot: a value that
 * is replaced or purged, not evicted. 1 when it was there, else 0. */
int ec_items_remove(ec_itemstore *s, uint64_t key, uint64_t value_bytes);

/* The same for an item of any size: *value_bytes (may be NULL) says which
 * class it was in. 1 when it was there, else 0. */
int ec_items_remove_key(ec_itemstore *s, uint64_t key, uint64_t *value_bytes);

/* Is key published? (The daemon's own lookup.) */
bool ec_items_has(const ec_itemstore *s, uint64_t key, uint64_t value_bytes);

/* An access hint from a client's ring (EC_RING_ITEM_HINT): bumps the item's
 * use counter when the hint names a live item. Untrusted input. */
void ec_items_hint(ec_itemstore *s, uint64_t hint);

/* Unpublish and free every item whose key fn accepts (a tensor that
 * changed mode, was refreshed or retired). Returns how many. */
uint64_t ec_items_drop(ec_itemstore *s, bool (*fn)(uint64_t key, void *arg), void *arg);

/* Give one slab back (its items evicted), for memory the partitions need:
 * the least used slab of the largest class. The bytes freed, 0 if none. */
uint64_t ec_items_shrink(ec_itemstore *s);

/* Call fn for every published item and its use counter (0..3) and whether
 * it is in M, most used first is NOT guaranteed. */
void ec_items_foreach(const ec_itemstore *s,
                      void (*fn)(uint64_t key, unsigned freq, bool main, void *arg), void *arg);

void ec_items_stats(const ec_itemstore *s, ec_itemstore_stats *out);
uint64_t ec_items_bytes(const ec_itemstore *s); /* bytes of slabs held */

/* Largest value an item may have: a slab holds at least one. */
#define EC_ITEM_VALUE_MAX (EC_SLAB_BYTES - EC_SLAB_HEADER - 8)

#endif
