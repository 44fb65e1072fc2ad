/*
 * index.h - the open-addressing partition index in the segment.
 *
 * Keyed by (tensor id, partition); linear probing over index_slots (a power
 * of two) with backward-shift deletion, so there are no tombstones. Each
 * entry carries a seqlock (see layout.h for the protocol).
 *
 * Readers (clients and the daemon) call ec_index_lookup() and, after copying
 * rows, ec_index_still_valid(); they never write. A reader may miss an entry
 * that the daemon is moving during a deletion: a false miss is safe (the
 * reader asks the daemon, which finds it). A false hit is impossible.
 *
 * Writers: the daemon's engine thread only (ec_index_insert/remove).
 */
#ifndef EC_SHM_INDEX_H
#define EC_SHM_INDEX_H

#include <stdbool.h>
#include <stdint.h>

#include "common/hash.h"
#include "segment.h"

/* A reader's snapshot of one entry. */
typedef struct ec_index_ref {
    const ec_index_entry *entry;
    uint64_t seq;     /* even sequence observed */
    uint64_t offset;  /* validated: offset + length <= data_size */
    uint32_t length;
} ec_index_ref;

/* Look up (tensor, part). Returns 1 and fills *ref on a hit whose bounds are
 * valid, 0 on a miss. Lock-free; spins briefly on an entry being written. */
int ec_index_lookup(const ec_segment *seg, uint32_t tensor, uint32_t part, ec_index_ref *ref);

/* Hint the CPU to load the slot where (tensor, part) starts its probe: a
 * batch of lookups overlaps its cache misses this way. */
static inline void ec_index_prefetch(const ec_segment *seg, uint32_t tensor, uint32_t part)
{
    if (seg->index)
        __builtin_prefetch(&seg->index[ec_mix64(EC_INDEX_KEY(tensor, part)) & seg->index_mask]);
}

/* After copying from seg->data + ref->offset: true if the entry did not change
 * since the lookup, so the copy is not torn. */
static inline bool ec_index_still_valid(const ec_index_ref *ref)
{
    atomic_thread_fence(memory_order_acquire);
    return atomic_load_explicit(&ref->entry->seq, memory_order_relaxed) == ref->seq;
}

/* Daemon: publish (tensor, part) -> [offset, offset+length). The data must
 * already be written. EC_EEXIST if the key is present, EC_ENOSPC if the
 * table is full (cannot happen when sized by ec_segment_plan), EC_EINVAL for
 * tensor 0 or an out-of-bounds range. */
int ec_index_insert(ec_segment *seg, uint32_t tensor, uint32_t part, uint64_t offset,
                    uint32_t length);

/* Daemon: remove (tensor, part), bumping the sequence of every entry it
 * touches. Returns 0 and the removed range, or EC_ENOENT. */
int ec_index_remove(ec_segment *seg, uint32_t tensor, uint32_t part, uint64_t *offset_out,
                    uint32_t *length_out);

/* Daemon: call fn for every occupied entry (warm restart, teardown). Stops
 * and returns fn's value when it is non-zero. Not safe against concurrent
 * writers (there are none: the caller is the writer). */
int ec_index_foreach(const ec_segment *seg,
                     int (*fn)(uint32_t tensor, uint32_t part, uint64_t offset,
                               uint32_t length, void *arg),
                     void *arg);

/* Daemon: empty the whole index (bumping every sequence). */
void ec_index_clear(ec_segment *seg);

/* Number of occupied entries (a scan; for tests and stats). */
uint64_t ec_index_count(const ec_segment *seg);

#endif
