/*
 * partfile.h - the partition file format: one file per tensor.
 *
 *   offset 0      header, one 4 KiB page (struct ec_partfile_header)
 *   4096          partition table: `partitions` x {u64 offset, u64 length,
 *                 u64 xxh3_64 checksum, u64 reserved}, padded to 4 KiB
 *   data_off      partition p at data_off + p * stride, `length` bytes,
 *                 zero-padded to stride (stride = round_up(rpp * row_bytes,
 *                 4096)); the last partition may hold fewer rows and is
 *                 zero-padded to a 4 KiB multiple, where the file ends
 *
 * All integers little-endian. header_checksum is XXH3-64 of the header page
 * with that field zeroed; table_checksum is XXH3-64 of the table bytes.
 * Readers validate magic, version, both checksums, the arithmetic
 * (rows, row_bytes, partitions, offsets, lengths) and the file size before
 * trusting anything. Written by the importer (daemon, importer thread);
 * read by the engine's pager.
 */
#ifndef EC_CORE_PARTFILE_H
#define EC_CORE_PARTFILE_H

#include <stdint.h>
#include <sys/types.h>

#include "embcache.h"

#define EC_PARTFILE_MAGIC 0x3130545241504345ULL /* "ECPART01" little-endian */
#define EC_PARTFILE_VERSION 1u
#define EC_PARTFILE_ALIGN 4096u
#define EC_PARTFILE_EXT ".ecp"

typedef struct ec_partfile_meta {
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t rows;
    uint64_t row_bytes;
    uint64_t rows_per_partition;
    uint64_t partitions;
    uint64_t stride;            /* bytes between partitions in the file */
    uint64_t data_off;
    uint64_t file_size;
    uint64_t header_checksum;
} ec_partfile_meta;

/* Choose rows per partition for a target size: at least 1 row, at most
 * `rows`, a multiple of the rows that make 4 KiB when that fits, and never
 * more than UINT32_MAX bytes per partition (EC_ETOOBIG for a row larger than
 * that). target 0 means 1 MiB. */
int ec_partfile_plan(uint64_t rows, uint64_t row_bytes, uint64_t target,
                     uint64_t *rows_per_partition_out);

/* Fill meta's derived fields (rows, row_bytes, partitions, stride, data_off,
 * file_size) from dtype, ndim, shape and rows_per_partition. EC_EINVAL /
 * EC_ETOOBIG on overflow or an impossible shape. */
int ec_partfile_layout(ec_partfile_meta *meta);

/* Byte offset and length of partition p in the file. */
uint64_t ec_partfile_part_offset(const ec_partfile_meta *m, uint64_t p);
uint64_t ec_partfile_part_length(const ec_partfile_meta *m, uint64_t p);

typedef struct ec_partfile_writer ec_partfile_writer;

/* Start writing <dir>/<random 16 hex>.ecp.tmp for the layout in *meta (after
 * ec_partfile_layout). */
int ec_partfile_writer_open(const char *dir, const ec_partfile_meta *meta,
                            ec_partfile_writer **out);

/* Append row data, in order; any chunking. More than rows*row_bytes in total
 * is EC_EINVAL. */
int ec_partfile_writer_append(ec_partfile_writer *w, const void *buf, size_t len);

/* Check all rows were written, write table and header, fsync, rename to the
 * final name and fsync the directory. Fills the final file name (relative to
 * dir, e.g. "3f...a1.ecp"), the header checksum, and copies the partition
 * checksums into part_checksums (caller-allocated, meta->partitions long). */
int ec_partfile_writer_commit(ec_partfile_writer *w, char *name_out, size_t name_len,
                              uint64_t *header_checksum_out, uint64_t *part_checksums);

/* Abandon: close and unlink the temporary file. Also frees w. Safe on NULL.
 * After a successful commit, frees w without touching the file. */
void ec_partfile_writer_close(ec_partfile_writer *w);

/* Open and validate a partition file (header, table checksum, arithmetic,
 * file size) and fill meta. Returns an O_RDONLY|O_CLOEXEC fd in *fd_out.
 * EC_EIO, EC_ECORRUPT (with a message saying what failed). */
int ec_partfile_open(const char *path, ec_partfile_meta *meta, int *fd_out);

/* Read the partition table's checksums (meta->partitions of them). */
int ec_partfile_read_table(int fd, const ec_partfile_meta *meta, uint64_t *checksums);

/* pread partition p into buf (at least its length) and verify its XXH3-64
 * against `expected`. EC_EIO on a read error or short read (the file shrank),
 * EC_ECHECKSUM on a mismatch. Thread-safe (pread). */
int ec_partfile_read_partition(int fd, const ec_partfile_meta *meta, uint64_t p, void *buf,
                               uint64_t expected);

/* XXH3-64 of a buffer: the one checksum function of the project. */
uint64_t ec_checksum(const void *buf, size_t len);

#endif
