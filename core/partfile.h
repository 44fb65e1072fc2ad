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
 * by ec_partfile_upgrade(); read by the engine's pager, and read whole by
 * `embcache recover` (core/recover.c).
 *
 * The header page (4096 bytes, all of it covered by header_checksum):
 *
 *   0     192   struct ec_partfile_header (partfile.c)
 *   192   64    zero
 *   256   ...   the origin record, or zero (files written before it existed)
 *   ...         zero to the end of the page
 *
 * The origin record says which model version and tensor the file belongs
 * to, so that a lost or damaged catalog can be rebuilt from the files alone
 * (`embcache recover`). Written by the importer since this release, in
 * either format version (an upgraded file keeps it, or gets it from the
 * catalog); readers of the rest of the file ignore it (its bytes are only
 * covered by the header checksum, as they always were). Layout, at offset
 * EC_PARTFILE_ORIGIN_OFF, integers little-endian:
 *
 *   0     8   magic "ECORIG01" (EC_PARTFILE_ORIGIN_MAGIC)
 *   8     4   record length: 56 + model_len + tensor_len + params_len
 *   12    4   flags: bit 0 (EC_PARTFILE_ORIGIN_PARAMS_LOST) = the params
 *             JSON did not fit in the page and is not stored; other bits 0
 *   16    8   version (int64, >= 1)
 *   24    8   training round (int64, >= -1; -1 = none)
 *   32    8   created, Unix seconds (int64): the version's created time in
 *             the catalog
 *   40    4   tensors of the version: how many files one import wrote for
 *             it (a version is recovered only when all of them are found)
 *   44    2   model_len (1..EC_NAME_MAX)
 *   46    2   tensor_len (1..EC_NAME_MAX)
 *   48    4   params_len: bytes of params JSON stored (0 when lost)
 *   52    4   params_full_len: bytes of the version's params JSON
 *   56    ... model name, tensor name, params JSON (as given to the import,
 *             or as the catalog keeps it for a file `embcache upgrade`
 *             rewrote; registering either gives the same catalog entry),
 *             back to back, no terminators, no NUL
 *
 * The record ends at most at the end of the page: with the longest names
 * (255 bytes each) that leaves EC_PARTFILE_ORIGIN_PARAMS_MIN bytes of
 * params; params longer than what is left are not stored at all (flag bit
 * 0), never cut, and `embcache recover` registers such a version with
 * params "{}" and a warning that they were lost.
 */
#ifndef EC_CORE_PARTFILE_H
#define EC_CORE_PARTFILE_H

#include <stdbool.h>
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

#define EC_PARTFILE_ORIGIN_OFF 256u
#define EC_PARTFILE_ORIGIN_MAGIC 0x31304749524f4345ULL /* "ECORIG01" little-endian */
#define EC_PARTFILE_ORIGIN_FIXED 56u  /* bytes of the record before its strings */
#define EC_PARTFILE_ORIGIN_PARAMS_LOST 0x1u
/* Room for strings: the page after the fixed part of the record. */
#define EC_PARTFILE_ORIGIN_ROOM \
    (EC_PARTFILE_ALIGN - EC_PARTFILE_ORIGIN_OFF - EC_PARTFILE_ORIGIN_FIXED)
/* Params of at least this many bytes always fit (with the longest names). */
#define EC_PARTFILE_ORIGIN_PARAMS_MIN (EC_PARTFILE_ORIGIN_ROOM - 2u * EC_NAME_MAX)

/* What a partition file says about where it belongs (see the layout above). */
typedef struct ec_partfile_origin {
    bool present;                /* false: the file has no origin record */
    bool params_lost;            /* the params did not fit; params_json is "" */
    char model[EC_NAME_MAX + 1];
    char tensor[EC_NAME_MAX + 1];
    int64_t version;             /* >= 1 */
    int64_t round;               /* >= -1 */
    int64_t created_unix;
    uint32_t version_tensors;    /* >= 1 */
    uint32_t params_full_len;    /* length of the version's params JSON */
    char params_json[EC_PARTFILE_ORIGIN_ROOM + 1]; /* NUL-terminated */
} ec_partfile_origin;

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

/* Record the origin of the file being written (see the layout above) in
 * the header page that commit writes. Call before ec_partfile_writer_commit.
 * o->present is ignored and its params fields are ignored: params_json (the
 * version's params, json()-normalized; NULL or "" for none) is stored when
 * it fits in the page, and otherwise left out with the params-lost flag set
 * (*params_lost_out, may be NULL, says which).
 * @return 0, or EC_EINVAL (NULL writer or origin, a writer already committed,
 *         a name of 0 or more than EC_NAME_MAX bytes, version < 1, round <
 *         -1, version_tensors 0, params of more than UINT32_MAX bytes). */
int ec_partfile_writer_set_origin(ec_partfile_writer *w, const ec_partfile_origin *o,
                                  const char *params_json, bool *params_lost_out);

/* The origin record as bytes, and back. Pure functions (the writer, the
 * reader, tests and fuzzing use them). rec is the header page from
 * EC_PARTFILE_ORIGIN_OFF to its end (len == EC_PARTFILE_ALIGN -
 * EC_PARTFILE_ORIGIN_OFF, else EC_EINVAL).
 * encode: fills all of rec (zero after the record); params as for
 * ec_partfile_writer_set_origin; *params_lost_out may be NULL. EC_EINVAL as
 * there.
 * decode: all of rec zero gives present = false (a file written before
 * origins existed); otherwise every field is checked (magic, lengths,
 * ranges, no NUL in a string, zero after the record, flags) and anything
 * wrong is EC_ECORRUPT saying what. *o is written only on success. */
int ec_partfile_origin_encode(const ec_partfile_origin *o, const char *params_json,
                              unsigned char *rec, size_t len, bool *params_lost_out);
int ec_partfile_origin_decode(const unsigned char *rec, size_t len, ec_partfile_origin *o);

/* Read the origin record of a file opened with ec_partfile_open(): the
 * header page is read again and must still be the one opened (its
 * checksum). *out->present is false for a file without one.
 * @return 0, or EC_EINVAL, EC_EIO, EC_ENOMEM, EC_ECORRUPT (the file changed
 *         since it was opened, or the record is malformed). Thread-safe. */
int ec_partfile_read_origin(int fd, const ec_partfile_meta *meta, ec_partfile_origin *out);

/* Read every byte of a file opened with ec_partfile_open() and check it:
 * the header again, the partition table and (version 2) the block table
 * against their checksums, every partition against its table checksum and
 * (version 2) every data block, padding included, against the block table.
 * The one proof that a file's data is whole; `embcache recover` runs it on
 * every file before registering it. Streams in chunks of at most 1 MiB.
 * Fills part_checksums (caller-allocated, meta->partitions entries; may be
 * NULL) with the table's checksums, written only on success.
 * @return 0, or EC_EINVAL, EC_ENOMEM, EC_EIO (a read failed or came up
 *         short), EC_ECORRUPT (a header or table check failed),
 *         EC_ECHECKSUM (a partition or block failed its checksum: the
 *         message names which). Thread-safe (pread only). */
int ec_partfile_verify(int fd, const ec_partfile_meta *meta, uint64_t *part_checksums);

/* ec_partfile_verify for a file pulled lazily (`embcache pull --lazy`),
 * whose data region is partly holes: a partition with a hole anywhere in
 * its bytes is not read and is counted in *absent; every other partition
 * is checked as ec_partfile_verify checks it. On a file system without
 * SEEK_HOLE every partition counts as present. absent may be NULL (then
 * this is ec_partfile_verify). */
int ec_partfile_verify_present(int fd, const ec_partfile_meta *meta, uint64_t *part_checksums,
                               uint64_t *absent);

/* Whether bytes [off, off + len) of fd hold no hole (SEEK_DATA/SEEK_HOLE;
 * a file system without them reports none, and a checksum then speaks). */
bool ec_partfile_range_on_disk(int fd, uint64_t off, uint64_t len);

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
 * modified nor removed. The new file's origin record is `origin` with
 * `params_json` (as ec_partfile_writer_set_origin) when origin is not NULL;
 * otherwise the source's, kept as it is (none if it has none). Outputs as
 * ec_partfile_writer_commit: the new file's
 * name relative to dir, its header checksum (may be NULL) and its partition
 * checksums (may be NULL; equal to the source's).
 * @return 0, or EC_EINVAL, EC_EIO, EC_ENOMEM (a partition does not fit in
 *         memory), EC_ENOSPC, EC_ECORRUPT (the source fails validation),
 *         EC_ECHECKSUM (a partition of the source fails its checksum: the
 *         message names it; nothing is left in dir). Call from the importer
 *         thread or a tool; uses only its own descriptors. */
int ec_partfile_upgrade(const char *src_path, const char *dir, const ec_partfile_origin *origin,
                        const char *params_json, char *name_out, size_t name_len,
                        uint64_t *header_checksum_out, uint64_t *part_checksums);

/* XXH3-64 of a buffer: the one checksum function of the project. */
uint64_t ec_checksum(const void *buf, size_t len);

#endif
