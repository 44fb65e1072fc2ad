/*
 * segment.h - create, seal, attach and map the shared segment.
 *
 * The segment is an anonymous memfd (nothing in /dev/shm, no name anyone
 * could open). The daemon creates it (ec_segment_create_geometry), hands it
 * to its keeper (core/keeper.h) and seals it (ec_segment_seal): from then
 * on no new writable mapping, write(2), hole punch or size change is
 * possible for anyone, whatever their uid; the two mappings made before the
 * seal (the daemon's and the keeper's) stay writable. A worker restarted
 * after a crash inherits the keeper's mapping by fork and takes it over
 * (ec_segment_attach). Clients map the read-only descriptor the daemon hands
 * them (ec_segment_map_fd), which refuses a segment that is not sealed.
 * Knows nothing of sockets, the catalog or CUDA.
 *
 * Segments of versions before the keeper were named "/embcache-<hex>" in
 * /dev/shm with a record in the data directory; ec_segment_remove_legacy
 * removes such a segment (if it is ours) and its record.
 */
#ifndef EC_SHM_SEGMENT_H
#define EC_SHM_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

#define EC_SEGMENT_NAME_MAX 64
#define EC_SEGMENT_RECORD "segment" /* earlier versions' record in the data dir */

typedef struct ec_segment {
    int fd;                 /* the memfd (-1 when closed) */
    bool writable;          /* mapped PROT_READ|PROT_WRITE */
    uint8_t *base;          /* mapping */
    size_t size;            /* mapped bytes == header->segment_size */
    ec_shm_header *hdr;     /* == base */
    ec_index_entry *index;  /* base + index_off */
    uint64_t index_slots;   /* power of two */
    uint64_t index_mask;    /* index_slots - 1 */
    ec_item_bucket *items;  /* base + item_off: the item index */
    uint64_t item_buckets;  /* 0: no item store */
    uint8_t *data;          /* base + data_off */
    uint64_t data_size;
    uint64_t index_used;    /* daemon-private, kept by index.c: occupied index
                             * entries (load-factor check); EC_INDEX_USED_UNKNOWN
                             * until index.c has counted them */
} ec_segment;

#define EC_INDEX_USED_UNKNOWN UINT64_MAX

/* Compute a layout for a segment of `size` bytes: index slots sized for the
 * most partitions the data area can hold (one per 4 KiB page, times two for
 * load factor <= 0.5, rounded to a power of two). Fails EC_EINVAL when size
 * is too small (< 1 MiB) or not a multiple of EC_SHM_PAGE. */
int ec_segment_plan(uint64_t size, uint64_t *index_slots, uint64_t *data_off,
                    uint64_t *data_size);
/* The same with room for `device_tables` device indexes (0..8) after the
 * host index, each of the host index's size. */
int ec_segment_plan_ex(uint64_t size, unsigned device_tables, uint64_t *index_slots,
                       uint64_t *data_off, uint64_t *data_size);

/* Where a segment's parts go (ec_segment_plan_geometry). */
typedef struct ec_segment_geometry {
    uint64_t index_slots;   /* partition index slots (and each device table's) */
    uint64_t item_off;      /* item index: item_buckets buckets of 64 bytes */
    uint64_t item_buckets;
    uint64_t data_off, data_size;
} ec_segment_geometry;

/* The average value size the item index is sized for by default: rows of
 * 128 float32s. */
#define EC_ITEM_BYTES_DEFAULT 512u

/* The layout of a segment of `size` bytes with `device_tables` device
 * indexes and an item index sized for a data area full of items of
 * item_bytes (plus their key) at most 85% of its slots used; item_bytes 0:
 * no item index. EC_EINVAL for a size that cannot hold them. */
int ec_segment_plan_geometry(uint64_t size, unsigned device_tables, uint64_t item_bytes,
                             ec_segment_geometry *out);

/* Daemon: create a new segment of `size` bytes as a memfd, reserve its
 * memory with posix_fallocate (EC_ENOSPC with a message naming the size when
 * the memory is not there), write the header with generation 1 and map it
 * read-write. Not sealed: map it wherever else it must be writable (the
 * keeper), then ec_segment_seal. */
int ec_segment_create_geometry(uint64_t size, unsigned device_tables, uint64_t item_bytes,
                               ec_segment *out);
/* Create (default item index) and seal at once, for a daemon without a
 * keeper and for tests. */
int ec_segment_create(uint64_t size, ec_segment *out);
/* The same with `device_tables` device indexes (ec_segment_plan_ex). */
int ec_segment_create_ex(uint64_t size, unsigned device_tables, ec_segment *out);
/* Seal the segment: F_SEAL_FUTURE_WRITE, F_SEAL_SHRINK, F_SEAL_GROW and
 * F_SEAL_SEAL. 0 when it already is. */
int ec_segment_seal(ec_segment *seg);
/* Daemon: take over a read-write mapping of the segment memfd `fd` of
 * `size` bytes at `base` (inherited from the keeper): checks the size,
 * validates the header (EC_ECORRUPT / EC_EVERSION) and seals it if a worker
 * died before it could. On success fd and the mapping belong to out. Does
 * not bump the generation. */
int ec_segment_attach(int fd, void *base, size_t size, ec_segment *out);
/* A segment struct whose index is device table `dev` of seg, bounded by a
 * slab of slab_size bytes (its data pointer is NULL: device offsets are not
 * addresses in this process). For ec_index_* calls; the daemon keeps one per
 * device (its index_used is its own). EC_EINVAL when dev >= device_tables. */
int ec_segment_device_view(const ec_segment *seg, unsigned dev, uint64_t slab_size,
                           ec_segment *out);

/* Client: map a descriptor received from the daemon, PROT_READ only, and
 * validate it: EC_EPERM when it is not sealed against writes. The fd is
 * dup'ed; the caller keeps its own. */
int ec_segment_map_fd(int fd, ec_segment *out);

/* Open a new read-only descriptor of the daemon's (sealed) segment, to
 * hand to a client. The caller closes it. */
int ec_segment_open_readonly(const ec_segment *seg, int *fd_out);

/* Validate a mapped header against the mapped size (invariants 1-3 of
 * layout.h). Returns 0, EC_ECORRUPT or EC_EVERSION with a message. */
int ec_segment_validate(const void *base, size_t mapped_size);

/* Unmap and close. The memory goes when the last mapping and descriptor
 * of it go (the keeper's, clients'). */
void ec_segment_close(ec_segment *seg);

/* Remove an earlier version's segment: the /dev/shm segment named in
 * <data_dir>/segment when this euid owns it, and the record. 0 when there
 * was none. */
int ec_segment_remove_legacy(const char *data_dir);

/* Remove the directory tree at path, and with every earlier version's
 * segment record in it the segment it names (ec_segment_remove_legacy):
 * for test and benchmark scratch directories. */
void ec_segment_rmtree(const char *path);

#endif
