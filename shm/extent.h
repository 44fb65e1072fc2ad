/*
 * extent.h - the allocator of extents in the segment's data area.
 *
 * Daemon-private: the allocator's state lives in the daemon's heap, never in
 * shared memory (clients cannot write the segment, and a restarted daemon
 * rebuilds the state from the index with ec_extent_reserve). Extents are runs
 * of whole EC_SHM_PAGE pages; offsets are relative to the data area. Free
 * runs are coalesced with their neighbours on free. Single-threaded: the
 * daemon's engine thread is the only caller.
 */
#ifndef EC_SHM_EXTENT_H
#define EC_SHM_EXTENT_H

#include <stdint.h>

typedef struct ec_extents ec_extents;

typedef struct ec_extent_stats {
    uint64_t capacity;      /* bytes managed */
    uint64_t used;          /* bytes allocated */
    uint64_t free_runs;     /* number of free runs (fragmentation) */
    uint64_t largest_free;  /* bytes in the largest free run */
} ec_extent_stats;

/* Manage [0, capacity) bytes; capacity must be a multiple of EC_SHM_PAGE. */
int ec_extents_new(uint64_t capacity, ec_extents **out);
void ec_extents_free(ec_extents *ex);

/* Allocate `bytes` (rounded up to whole pages). EC_ENOSPC when no free run is
 * large enough (the caller evicts and retries). */
int ec_extent_alloc(ec_extents *ex, uint64_t bytes, uint64_t *off_out);

/* The same at an offset that is a multiple of align (a power of two, at
 * least a page): for item slabs, whose items find their slab by rounding
 * their offset down. */
int ec_extent_alloc_aligned(ec_extents *ex, uint64_t bytes, uint64_t align, uint64_t *off_out);

/* Free an extent previously allocated (or reserved) with the same size.
 * EC_EINVAL for a range not wholly allocated (a double free is refused, not
 * silently merged). */
int ec_extent_release(ec_extents *ex, uint64_t off, uint64_t bytes);

/* Mark [off, off+bytes) allocated (warm restart). EC_EINVAL if any page of it
 * is already allocated or it is out of bounds. */
int ec_extent_reserve(ec_extents *ex, uint64_t off, uint64_t bytes);

void ec_extent_stats_get(const ec_extents *ex, ec_extent_stats *out);

#endif
