/*
 * segment.h - create, re-attach and map the shared segment.
 *
 * The daemon creates the segment (ec_segment_create) or re-attaches the one
 * it recorded in its data directory (ec_segment_reopen); clients map the
 * read-only descriptor the daemon hands them (ec_segment_map_fd). Knows
 * nothing of sockets, the catalog or CUDA.
 *
 * Naming: "/embcache-<32 random hex digits>", from getrandom(2), created with
 * O_CREAT|O_EXCL and mode 0600. The name is written to <data_dir>/segment
 * (temporary file + rename) so a restarted daemon finds it again; it is never
 * sent to clients.
 */
#ifndef EC_SHM_SEGMENT_H
#define EC_SHM_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "layout.h"

#define EC_SEGMENT_NAME_MAX 64
#define EC_SEGMENT_RECORD "segment" /* file name inside the data dir */

typedef struct ec_segment {
    int fd;                 /* the shm descriptor (-1 when closed) */
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
    char name[EC_SEGMENT_NAME_MAX]; /* "" for a segment mapped from a fd */
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

/* Daemon: create a new segment of `size` bytes, reserve its memory with
 * posix_fallocate (a full /dev/shm fails here with EC_ENOSPC and a message
 * naming /dev/shm and the size), write the header with generation 1, and
 * record its name in <data_dir>/segment. Maps it read-write. */
int ec_segment_create(const char *data_dir, uint64_t size, ec_segment *out);
/* The same with `device_tables` device indexes (ec_segment_plan_ex). */
int ec_segment_create_ex(const char *data_dir, uint64_t size, unsigned device_tables,
                         ec_segment *out);
/* The same with an item index sized for item_bytes (ec_segment_plan_geometry). */
int ec_segment_create_geometry(const char *data_dir, uint64_t size, unsigned device_tables,
                               uint64_t item_bytes, ec_segment *out);
/* A segment struct whose index is device table `dev` of seg, bounded by a
 * slab of slab_size bytes (its data pointer is NULL: device offsets are not
 * addresses in this process). For ec_index_* calls; the daemon keeps one per
 * device (its index_used is its own). EC_EINVAL when dev >= device_tables. */
int ec_segment_device_view(const ec_segment *seg, unsigned dev, uint64_t slab_size,
                           ec_segment *out);

/* Daemon: re-attach the segment recorded in <data_dir>/segment. Checks with
 * fstat that it is owned by this euid with mode 0600 (EC_EPERM otherwise),
 * then validates it (EC_ECORRUPT / EC_EVERSION). EC_ENOENT when there is no
 * record or the named segment no longer exists. Does not bump generation. */
int ec_segment_reopen(const char *data_dir, ec_segment *out);

/* Client: map a descriptor received from the daemon, PROT_READ only, and
 * validate it. The fd is dup'ed; the caller keeps its own. */
int ec_segment_map_fd(int fd, ec_segment *out);

/* Open a new read-only descriptor of the daemon's segment, to hand to a
 * client. The caller closes it. */
int ec_segment_open_readonly(const ec_segment *seg, int *fd_out);

/* Validate a mapped header against the mapped size (invariants 1-3 of
 * layout.h). Returns 0, EC_ECORRUPT or EC_EVERSION with a message. */
int ec_segment_validate(const void *base, size_t mapped_size);

/* Unmap and close. The segment itself stays (it outlives the daemon). */
void ec_segment_close(ec_segment *seg);

/* Remove the segment's name and the record in data_dir (the memory goes when
 * the last mapping goes). */
int ec_segment_destroy(ec_segment *seg, const char *data_dir);

/* Remove the directory tree at path, and with every segment record in it
 * (a data directory's "segment") the shared-memory segment it names: for
 * test and benchmark scratch directories, whose daemons may have been
 * killed, so that no run leaves memory behind in /dev/shm. */
void ec_segment_rmtree(const char *path);

#endif
