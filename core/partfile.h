/*
 * partfile.h - the partition file format: one file per tensor.
 *
 * Format version 2 (what the writer produces):
 *
 *   offset 0         header, one 4 KiB page (struct ec_partfile_header)
 *   4096             partition table: `partitions` x {u64 offset, u64 length,
 *                    u64 xxh3_64 checksum, u64 reserved}, padded to 4 KiB
 *   block_table_off  block table: `blocks` x u64, the XXH3-64 of each 4 KiB
 *                    block of the data region, padded to 4 KiB
 *   data_off         partition p at data_off + p * stride, `length` bytes,
 *                    zero-padded to stride (stride = round_up(rpp * row_bytes,
 *                    4096)); the last partition may hold fewer rows and is
 *                    zero-padded to a 4 KiB multiple, where the file ends
 *
 * The data region is [data_off, file_size), blocks = its size / 4096, and a
 * block's checksum covers all 4096 bytes of it, zero padding included, so a
 * reader may fetch and verify just the blocks that hold a few rows.
 *
 * Format version 1 is the same without the block table (data_off = 4096 +
 * the padded partition table) and with the three block fields of the header
 * zero. It is still read, and served by whole partitions only;
 * ec_partfile_upgrade() rewrites it as version 2.
 *
 * All integers little-endian. header_checksum is XXH3-64 of the header page
 * with that field zeroed; table_checksum is XXH3-64 of the table entries and
 * block_table_checksum of the block table entries (not the zero padding).
 * Readers validate magic, version, all checksums, the arithmetic (rows,
 * row_bytes, partitions, offsets, lengths, blocks) and the file size before
 * trusting anything. Written by the importer (daemon, importer thread) and
 * by ec_partfile_upgrade(); read by the engine's pager.
 */
#ifndef EC_CORE_PARTFILE_H
#define EC_CORE_PARTFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "embcache.h"

#define EC_PARTFILE_MAGIC 0x3130545241504345ULL /* "ECPART01" little-endian */
#define EC_PARTFILE_VERSION 2u   /* what the writer produces */
#define EC_PARTFILE_VERSION_1 1u /* no block table: whole partitions only */
#define EC_PARTFILE_ALIGN 4096u
#define EC_PARTFILE_BLOCK 4096u  /* the unit of a block checksum */
#define EC_PARTFILE_EXT ".ecp"

typedef struct ec_partfile_meta {
    uint32_t version;           /* EC_PARTFILE_VERSION_1 or _VERSION; 0 before
                                 * ec_partfile_layout() (= the current one) */
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t rows;
    uint64_t row_bytes;
    uint64_t rows_per_partition;
    uint64_t partitions;
    uint64_t stride;            /* bytes between partitions in the file */
    uint64_t blocks;            /* 4 KiB blocks of the data region; 0 for v1 */
    uint64_t block_table_off;   /* 0 for v1 */
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

/* Fill meta's derived fields (rows, row_bytes, partitions, stride, blocks,
 * block_table_off, data_off, file_size) from version, dtype, ndim, shape and
 * rows_per_partition. meta->version selects the layout: 0 means the current
 * one (EC_PARTFILE_VERSION), and is replaced by it; EC_PARTFILE_VERSION_1
 * gives the old layout (blocks and block_table_off 0).
 * @return 0, or EC_EINVAL (NULL, unknown version, dtype or ndim,
 *         rows_per_partition 0), EC_ETOOBIG (sizes overflow 64 bits or the
 *         file would exceed INT64_MAX bytes). Pure arithmetic, thread-safe. */
int ec_partfile_layout(ec_partfile_meta *meta);

/* Byte offset and length of partition p in the file. */
uint64_t ec_partfile_part_offset(const ec_partfile_meta *m, uint64_t p);
uint64_t ec_partfile_part_length(const ec_partfile_meta *m, uint64_t p);

/* File offset of the first byte of `row` (< m->rows): the offset of its
 * partition plus its place in it. */
uint64_t ec_partfile_row_offset(const ec_partfile_meta *m, uint64_t row);

/* File offset of data block b (blocks are numbered from data_off). */
uint64_t ec_partfile_block_offset(const ec_partfile_meta *m, uint64_t b);

/* The data blocks that hold `row`: *first_block (numbered from data_off) and
 * *nblocks (1 or more: a row may straddle blocks; 0 for rows of 0 bytes,
 * with *first_block the block the row's offset falls in). Arithmetic only,
 * valid for either version (a v1 file has no checksums for them).
 * @return 0, or EC_EINVAL (NULL argument), EC_ERANGE (row >= m->rows).
 *         Outputs written only on success. */
int ec_partfile_row_blocks(const ec_partfile_meta *m, uint64_t row, uint64_t *first_block,
                           uint32_t *nblocks);

typedef struct ec_partfile_writer ec_partfile_writer;

/* Start writing <dir>/<random 16 hex>.ecp.tmp for the layout in *meta (after
 * ec_partfile_layout). The writer writes the current version only:
 * EC_EINVAL for a meta laid out as version 1. */
int ec_partfile_writer_open(const char *dir, const ec_partfile_meta *meta,
                            ec_partfile_writer **out);

/* Append row data, in order (partition by partition, as the file holds
 * them); any chunking. The partition and block checksums are computed as the
 * bytes go by, the zero padding included; nothing is read back. More than
 * rows*row_bytes in total is EC_EINVAL. */
int ec_partfile_writer_append(ec_partfile_writer *w, const void *buf, size_t len);

/* Check all rows were written, write the partition table, the block table
 * and the header, fsync, rename to the final name and fsync the directory.
 * Fills the final file name (relative to dir, e.g. "3f...a1.ecp"), the
 * header checksum, and copies the partition checksums into part_checksums
 * (caller-allocated, meta->partitions long). */
int ec_partfile_writer_commit(ec_partfile_writer *w, char *name_out, size_t name_len,
                              uint64_t *header_checksum_out, uint64_t *part_checksums);

/* Abandon: close and unlink the temporary file. Also frees w. Safe on NULL.
 * After a successful commit, frees w without touching the file. */
void ec_partfile_writer_close(ec_partfile_writer *w);

/* Open and validate a partition file of version 1 or 2 (header, table and
 * block table checksums, arithmetic, file size) and fill meta (its version
 * says which). Returns an O_RDONLY|O_CLOEXEC fd in *fd_out.
 * EC_EIO, EC_ENOMEM, EC_ECORRUPT (with a message saying what failed). */
int ec_partfile_open(const char *path, ec_partfile_meta *meta, int *fd_out);

/* Read the partition table's checksums (meta->partitions of them). */
int ec_partfile_read_table(int fd, const ec_partfile_meta *meta, uint64_t *checksums);

/* Read the block table of a version-2 file opened with ec_partfile_open into
 * sums (caller-allocated, meta->blocks entries), after validating the header
 * again and the block table against its checksum.
 * @return 0, or EC_EINVAL (bad argument), EC_EVERSION (a version-1 file: it
 *         has no block checksums and is served by whole partitions; the
 *         message says to run `embcache upgrade`), EC_ECORRUPT (the table or
 *         header is damaged, or the file changed since it was opened),
 *         EC_EIO, EC_ENOMEM. On failure the contents of sums are
 *         unspecified (it is read in place). Thread-safe (pread). */
int ec_partfile_read_block_sums(int fd, const ec_partfile_meta *meta, uint64_t *sums);

/* pread partition p into buf (at least its length) and verify its XXH3-64
 * against `expected`. EC_EIO on a read error or short read (the file shrank),
 * EC_ECHECKSUM on a mismatch. Thread-safe (pread). */
int ec_partfile_read_partition(int fd, const ec_partfile_meta *meta, uint64_t p, void *buf,
                               uint64_t expected);

/* Rewrite the partition file at src_path (version 1 or 2) as a version-2
 * file in dir with the same dtype, shape and rows per partition, through the
 * writer (temporary name, fsync, rename). Every partition is read whole and
 * verified against the source's table before any of it is written, so an
 * unverified byte never reaches the new file. The source is neither
 * modified nor removed. Outputs as ec_partfile_writer_commit: the new file's
 * name relative to dir, its header checksum (may be NULL) and its partition
 * checksums (may be NULL; equal to the source's).
 * @return 0, or EC_EINVAL, EC_EIO, EC_ENOMEM (a partition does not fit in
 *         memory), EC_ENOSPC, EC_ECORRUPT (the source fails validation),
 *         EC_ECHECKSUM (a partition of the source fails its checksum: the
 *         message names it; nothing is left in dir). Call from the importer
 *         thread or a tool; uses only its own descriptors. */
int ec_partfile_upgrade(const char *src_path, const char *dir, char *name_out,
                        size_t name_len, uint64_t *header_checksum_out,
                        uint64_t *part_checksums);

/* XXH3-64 of a buffer: the one checksum function of the project. */
uint64_t ec_checksum(const void *buf, size_t len);

#endif
