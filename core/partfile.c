/*
 * partfile.c - the partition file format (see partfile.h): planning,
 * layout arithmetic, the streaming writer and the validating reader.
 *
 * The importer thread of the daemon plans and writes partition files: the
 * writer appends row data in any chunking, hashes each partition with an
 * XXH3-64 streaming state and each 4 KiB block of the data region (zero
 * padding included) as the bytes go by, and at commit writes the partition
 * table, the block table and the header, fsyncs, renames "<hex>.ecp.tmp" to
 * "<hex>.ecp" and fsyncs the directory, so a file that carries the final
 * name is complete. The engine's pager opens files with ec_partfile_open()
 * (which trusts nothing it has not checked) and reads partitions with
 * ec_partfile_read_partition(), which is thread-safe (pread only), or
 * blocks, verified against ec_partfile_read_block_sums(). Version-1 files
 * (no block table) are still read; ec_partfile_upgrade() rewrites them.
 * The writer also puts the file's origin record (who it belongs to, coded
 * by partfile_origin.c) in the header page; ec_partfile_read_origin() and
 * ec_partfile_verify() (every byte read and checked) serve `embcache
 * recover` (core/recover.c), which rebuilds a catalog from the files.
 *
 * Invariants a valid file keeps (checked by ec_partfile_open):
 *  1. header page at 0, 4 KiB; header_checksum = XXH3-64 of the page with
 *     the checksum field zeroed; reserved fields and the rest of the page
 *     (the origin record at EC_PARTFILE_ORIGIN_OFF, or zeros) are covered
 *     by that checksum. version is 1 or 2; in version 1 the three block
 *     fields are 0. Readers of the data ignore the origin record; only
 *     ec_partfile_read_origin() decodes it.
 *  2. rows, row_bytes, partitions, stride, blocks, block_table_off,
 *     data_off, file_size are exactly what ec_partfile_layout() derives
 *     from (version, dtype, ndim, shape, rpp).
 *  3. the table at 4096 holds one entry per partition whose offset and
 *     length equal ec_partfile_part_offset/length(); table_checksum covers
 *     the entries (not the zero padding after them).
 *  4. (version 2) the block table at block_table_off holds one XXH3-64 per
 *     4 KiB block of [data_off, file_size); block_table_checksum covers the
 *     entries (not the padding). data_off = block_table_off + the table
 *     padded to 4 KiB.
 *  5. partition p starts at data_off + p * stride; every partition but the
 *     last is zero-padded to stride, the last to a 4 KiB multiple, and the
 *     file ends there (file_size == st_size). Block checksums cover that
 *     padding, so it must stay zero.
 */
#include "core/partfile.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>
#if defined(__x86_64__) && __has_include(<xxh_x86dispatch.h>)
/* libxxhash picks SSE2, AVX2 or AVX-512 at run time (same hashes): verifying
 * a partition is the pager's main cost, and AVX2 halves it. */
#include <xxh_x86dispatch.h>
#endif

#include "common/dtype.h"
#include "common/err.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "embcache partition files are little-endian and written with native stores; port the header I/O before building for a big-endian host"
#endif

/* ------------------------------------------------------------------ */
/* On-disk structures                                                  */

/* The header, at offset 0 of the file; the rest of the 4 KiB page is zero. */
struct ec_partfile_header {
    uint64_t magic;              /* EC_PARTFILE_MAGIC */
    uint32_t version;            /* EC_PARTFILE_VERSION */
    uint32_t dtype;              /* ec_dtype */
    uint32_t ndim;               /* 0..EC_MAX_DIMS */
    uint32_t reserved0;          /* 0 */
    uint64_t shape[EC_MAX_DIMS]; /* unused dims are 0 */
    uint64_t rows;
    uint64_t row_bytes;
    uint64_t rows_per_partition;
    uint64_t partitions;
    uint64_t stride;
    uint64_t table_off;          /* EC_PARTFILE_ALIGN */
    uint64_t data_off;
    uint64_t file_size;
    uint64_t table_checksum;     /* XXH3-64 of the table entries */
    uint64_t header_checksum;    /* XXH3-64 of the page with this field 0 */
    /* Version 2; 0 in version 1. */
    uint64_t block_table_off;    /* 4096 + the partition table, padded */
    uint64_t blocks;             /* (file_size - data_off) / 4096 */
    uint64_t block_table_checksum; /* XXH3-64 of the block table entries */
};

static_assert(sizeof(struct ec_partfile_header) == 192, "partfile header size");
static_assert(offsetof(struct ec_partfile_header, version) == 8, "header layout");
static_assert(offsetof(struct ec_partfile_header, ndim) == 16, "header layout");
static_assert(offsetof(struct ec_partfile_header, shape) == 24, "header layout");
static_assert(offsetof(struct ec_partfile_header, rows) == 88, "header layout");
static_assert(offsetof(struct ec_partfile_header, table_off) == 128, "header layout");
static_assert(offsetof(struct ec_partfile_header, data_off) == 136, "header layout");
static_assert(offsetof(struct ec_partfile_header, table_checksum) == 152, "header layout");
static_assert(offsetof(struct ec_partfile_header, header_checksum) == 160, "header layout");
static_assert(offsetof(struct ec_partfile_header, block_table_off) == 168, "header layout");
static_assert(offsetof(struct ec_partfile_header, blocks) == 176, "header layout");
static_assert(offsetof(struct ec_partfile_header, block_table_checksum) == 184,
              "header layout");
static_assert(sizeof(struct ec_partfile_header) <= EC_PARTFILE_ALIGN, "header fits a page");
static_assert(sizeof(struct ec_partfile_header) <= EC_PARTFILE_ORIGIN_OFF,
              "the origin record follows the header");
static_assert(EC_PARTFILE_ORIGIN_PARAMS_MIN >= 3000, "room for params with the longest names");

/* One entry of the partition table. */
struct ec_partfile_entry {
    uint64_t offset;
    uint64_t length;
    uint64_t checksum;
    uint64_t reserved; /* 0 */
};

static_assert(sizeof(struct ec_partfile_entry) == 32, "table entry size");
static_assert(offsetof(struct ec_partfile_entry, checksum) == 16, "table entry layout");

#define HDR_PAGE EC_PARTFILE_ALIGN
#define ENTRY_SIZE ((uint64_t)sizeof(struct ec_partfile_entry))
#define BLOCK ((uint64_t)EC_PARTFILE_BLOCK)
#define BLOCK_ENTRY ((uint64_t)sizeof(uint64_t))
#define DEFAULT_TARGET (1024u * 1024u)

static_assert(EC_PARTFILE_BLOCK == EC_PARTFILE_ALIGN,
              "partitions start on block boundaries because stride is page-aligned");

/* ------------------------------------------------------------------ */
/* Arithmetic                                                          */

uint64_t ec_checksum(const void *buf, size_t len)
{
    return (uint64_t)XXH3_64bits(buf, len);
}

static int mul_ovf(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

static int add_ovf(uint64_t a, uint64_t b, uint64_t *out)
{
    return __builtin_add_overflow(a, b, out);
}

/* round_up(v, EC_PARTFILE_ALIGN) with an overflow check. */
static int align_up(uint64_t v, uint64_t *out)
{
    uint64_t t;
    if (add_ovf(v, EC_PARTFILE_ALIGN - 1, &t))
        return 1;
    *out = t & ~(uint64_t)(EC_PARTFILE_ALIGN - 1);
    return 0;
}

static uint64_t gcd64(uint64_t a, uint64_t b)
{
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

int ec_partfile_plan(uint64_t rows, uint64_t row_bytes, uint64_t target,
                     uint64_t *rows_per_partition_out)
{
    uint64_t rpp, align, parts;

    if (!rows_per_partition_out)
        return ec_seterr(EC_EINVAL, "ec_partfile_plan: rows_per_partition_out is NULL");
    if (row_bytes > UINT32_MAX)
        return ec_seterr(EC_ETOOBIG,
                         "a row of %llu bytes is larger than the largest partition "
                         "(%u bytes); reshape the tensor so that a row is smaller",
                         (unsigned long long)row_bytes, UINT32_MAX);
    if (target == 0)
        target = DEFAULT_TARGET;
    if (target > UINT32_MAX)
        target = UINT32_MAX;

    if (rows == 0) {
        rpp = 1; /* no partitions at all; rpp must still be positive */
    } else if (row_bytes == 0) {
        rpp = rows; /* rows of no bytes: one empty partition */
    } else {
        uint64_t target_rows = target / row_bytes;
        if (target_rows == 0)
            target_rows = 1;
        /* Rows that make a whole number of 4 KiB pages. */
        align = EC_PARTFILE_ALIGN / gcd64(row_bytes, EC_PARTFILE_ALIGN);
        rpp = align <= target_rows ? target_rows / align * align : target_rows;
        if (rpp > rows)
            rpp = rows;
    }
    assert(rpp >= 1);
    assert(rpp * row_bytes <= UINT32_MAX || rpp == 1);

    parts = rows / rpp + (rows % rpp != 0);
    if (parts > UINT32_MAX)
        return ec_seterr(EC_ETOOBIG,
                         "%llu rows of %llu bytes make %llu partitions of %llu rows, "
                         "more than %u; import with a larger partition size",
                         (unsigned long long)rows, (unsigned long long)row_bytes,
                         (unsigned long long)parts, (unsigned long long)rpp, UINT32_MAX);
    *rows_per_partition_out = rpp;
    return 0;
}

int ec_partfile_layout(ec_partfile_meta *m)
{
    uint64_t esize, row_elems = 1, rows, row_bytes, total, part_bytes, stride, parts;
    uint64_t table, data_off, last_len, last_pad, size, data_len = 0, blocks = 0;
    uint64_t btable = 0, btable_off = 0;
    uint32_t version;

    if (!m)
        return ec_seterr(EC_EINVAL, "ec_partfile_layout: meta is NULL");
    version = m->version ? m->version : EC_PARTFILE_VERSION;
    if (version != EC_PARTFILE_VERSION && version != EC_PARTFILE_VERSION_1)
        return ec_seterr(EC_EINVAL, "partition layout: format version %u is unknown; this "
                                    "build knows versions %u and %u", m->version,
                         EC_PARTFILE_VERSION_1, EC_PARTFILE_VERSION);
    if (!ec_dtype_valid((uint32_t)m->dtype))
        return ec_seterr(EC_EINVAL, "partition layout: dtype %u is not supported",
                         (unsigned)m->dtype);
    if (m->ndim > EC_MAX_DIMS)
        return ec_seterr(EC_EINVAL, "partition layout: %u dimensions, at most %d allowed",
                         m->ndim, EC_MAX_DIMS);
    if (m->rows_per_partition == 0)
        return ec_seterr(EC_EINVAL, "partition layout: rows_per_partition is 0");
    esize = ec_dtype_size(m->dtype);
    rows = m->ndim ? m->shape[0] : 1;
    for (uint32_t i = 1; i < m->ndim; i++)
        if (mul_ovf(row_elems, m->shape[i], &row_elems))
            goto toobig;
    if (mul_ovf(row_elems, esize, &row_bytes) || mul_ovf(rows, row_bytes, &total))
        goto toobig;
    if (mul_ovf(m->rows_per_partition, row_bytes, &part_bytes) || align_up(part_bytes, &stride))
        goto toobig;
    parts = rows / m->rows_per_partition + (rows % m->rows_per_partition != 0);
    if (mul_ovf(parts, ENTRY_SIZE, &table) || align_up(table, &table) ||
        add_ovf(HDR_PAGE, table, &data_off))
        goto toobig;
    /* The data region: every partition but the last padded to stride, the
     * last to a page. */
    if (parts > 0) {
        last_len = total - (parts - 1) * part_bytes; /* cannot overflow: < total */
        if (align_up(last_len, &last_pad) || mul_ovf(parts - 1, stride, &data_len) ||
            add_ovf(data_len, last_pad, &data_len))
            goto toobig;
    }
    /* Version 2: a checksum per block of the data region, between the
     * partition table and the data. Its size depends on the data region's
     * only, not on where the region starts. */
    if (version >= 2) {
        blocks = data_len / BLOCK;
        btable_off = data_off;
        if (mul_ovf(blocks, BLOCK_ENTRY, &btable) || align_up(btable, &btable) ||
            add_ovf(data_off, btable, &data_off))
            goto toobig;
    }
    if (add_ovf(data_off, data_len, &size) || size > (uint64_t)INT64_MAX)
        goto toobig;
    m->version = version;
    m->rows = rows;
    m->row_bytes = row_bytes;
    m->partitions = parts;
    m->stride = stride;
    m->blocks = blocks;
    m->block_table_off = btable_off;
    m->data_off = data_off;
    m->file_size = size;
    return 0;

toobig:
    return ec_seterr(EC_ETOOBIG,
                     "partition layout: shape and %llu rows per partition overflow 64-bit "
                     "byte counts; the tensor is too large to store",
                     (unsigned long long)m->rows_per_partition);
}

uint64_t ec_partfile_part_offset(const ec_partfile_meta *m, uint64_t p)
{
    return m->data_off + p * m->stride;
}

uint64_t ec_partfile_part_length(const ec_partfile_meta *m, uint64_t p)
{
    uint64_t first = p * m->rows_per_partition, n;

    if (p >= m->partitions)
        return 0;
    n = m->rows - first;
    if (n > m->rows_per_partition)
        n = m->rows_per_partition;
    return n * m->row_bytes;
}

uint64_t ec_partfile_row_offset(const ec_partfile_meta *m, uint64_t row)
{
    uint64_t p = row / m->rows_per_partition;

    return ec_partfile_part_offset(m, p) + (row - p * m->rows_per_partition) * m->row_bytes;
}

uint64_t ec_partfile_block_offset(const ec_partfile_meta *m, uint64_t b)
{
    return m->data_off + b * BLOCK;
}

int ec_partfile_row_blocks(const ec_partfile_meta *m, uint64_t row, uint64_t *first_block,
                           uint32_t *nblocks)
{
    uint64_t off, first, last;

    if (!m || !first_block || !nblocks || m->rows_per_partition == 0)
        return ec_seterr(EC_EINVAL, "ec_partfile_row_blocks: NULL argument or a meta not "
                                    "filled by ec_partfile_layout()");
    if (row >= m->rows)
        return ec_seterr(EC_ERANGE, "row %llu is outside the tensor's %llu rows",
                         (unsigned long long)row, (unsigned long long)m->rows);
    off = ec_partfile_row_offset(m, row) - m->data_off;
    first = off / BLOCK;
    if (m->row_bytes == 0) {
        *first_block = first;
        *nblocks = 0;
        return 0;
    }
    /* off + row_bytes is inside the file, whose size fits in INT64_MAX; a
     * row is at most UINT32_MAX bytes, so the count fits in 32 bits. */
    last = (off + m->row_bytes - 1) / BLOCK;
    if (last - first >= UINT32_MAX)
        return ec_seterr(EC_ETOOBIG, "a row of %llu bytes spans more than %u blocks",
                         (unsigned long long)m->row_bytes, UINT32_MAX);
    *first_block = first;
    *nblocks = (uint32_t)(last - first + 1);
    return 0;
}

/* ------------------------------------------------------------------ */
/* I/O helpers                                                         */

/* Write all of buf at off. Returns 0 or -errno. */
static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
    const char *p = buf;

    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        p += w;
        len -= (size_t)w;
        off += (uint64_t)w;
    }
    return 0;
}

/* Read len bytes at off. Returns the bytes read (< len only at end of
 * file), or -errno. */
static ssize_t pread_full(int fd, void *buf, size_t len, uint64_t off)
{
    char *p = buf;
    size_t got = 0;

    while (got < len) {
        ssize_t r = pread(fd, p + got, len - got, (off_t)(off + got));
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

/* The path of an fd for an error message (error paths only). */
static const char *fd_name(int fd, char *buf, size_t len)
{
    char link[64];
    ssize_t n;

    snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
    n = readlink(link, buf, len - 1);
    if (n <= 0) {
        snprintf(buf, len, "(fd %d)", fd);
        return buf;
    }
    buf[n] = '\0';
    return buf;
}

static int errno_code(int e)
{
    return e == ENOSPC || e == EDQUOT ? EC_ENOSPC : e == ENOMEM ? EC_ENOMEM : EC_EIO;
}

static uint64_t header_checksum_of(const unsigned char *page)
{
    unsigned char tmp[HDR_PAGE];

    memcpy(tmp, page, HDR_PAGE);
    memset(tmp + offsetof(struct ec_partfile_header, header_checksum), 0, sizeof(uint64_t));
    return ec_checksum(tmp, HDR_PAGE);
}

/* ------------------------------------------------------------------ */
/* Writer                                                              */

struct ec_partfile_writer {
    int fd;
    int state;               /* W_OPEN, W_RENAMED (final name exists), W_DONE */
    ec_partfile_meta meta;
    char *dir;
    char hex[17];
    uint64_t total;          /* rows * row_bytes */
    uint64_t written;        /* bytes appended so far */
    uint64_t cur;            /* partition being written */
    uint64_t cur_pos;        /* bytes of it written */
    uint64_t *checksums;     /* one per partition */
    XXH3_state_t *xxh;
    uint64_t *block_sums;    /* one per data block */
    uint64_t blk;            /* blocks finished so far */
    uint64_t blk_fill;       /* bytes of the next one staged in blk_buf */
    unsigned char *blk_buf;  /* BLOCK bytes */
    bool has_origin;         /* origin holds an encoded record */
    unsigned char origin[HDR_PAGE - EC_PARTFILE_ORIGIN_OFF];
};

enum { W_OPEN, W_RENAMED, W_DONE };

static char *path_join(const char *dir, const char *hex, const char *suffix)
{
    char *p;
    if (asprintf(&p, "%s/%s%s%s", dir, hex, EC_PARTFILE_EXT, suffix) < 0)
        return NULL;
    return p;
}

/* Feed len bytes of the data region, in file order, into the block
 * checksums; src NULL feeds zeros (padding). Whole blocks that arrive
 * aligned are hashed in place, the rest is staged in blk_buf. */
static void blocks_feed(ec_partfile_writer *w, const unsigned char *src, uint64_t len)
{
    while (len > 0) {
        uint64_t n;

        if (w->blk_fill == 0 && src && len >= BLOCK) {
            assert(w->blk < w->meta.blocks);
            w->block_sums[w->blk++] = ec_checksum(src, BLOCK);
            src += BLOCK;
            len -= BLOCK;
            continue;
        }
        n = BLOCK - w->blk_fill < len ? BLOCK - w->blk_fill : len;
        if (src) {
            memcpy(w->blk_buf + w->blk_fill, src, (size_t)n);
            src += n;
        } else {
            memset(w->blk_buf + w->blk_fill, 0, (size_t)n);
        }
        w->blk_fill += n;
        len -= n;
        if (w->blk_fill == BLOCK) {
            assert(w->blk < w->meta.blocks);
            w->block_sums[w->blk++] = ec_checksum(w->blk_buf, BLOCK);
            w->blk_fill = 0;
        }
    }
}

/* Finish every partition that is complete (including empty ones): its
 * checksum, and the zero padding after it into the block checksums (to
 * stride, or for the last one to a page; less than a page either way). */
static void writer_advance(ec_partfile_writer *w)
{
    while (w->cur < w->meta.partitions &&
           w->cur_pos == ec_partfile_part_length(&w->meta, w->cur)) {
        uint64_t len = w->cur_pos, end;

        if (w->cur + 1 < w->meta.partitions)
            end = w->meta.stride;
        else
            end = (len + BLOCK - 1) / BLOCK * BLOCK; /* len <= UINT32_MAX */
        blocks_feed(w, NULL, end - len);
        assert(w->blk_fill == 0);
        w->checksums[w->cur] = (uint64_t)XXH3_64bits_digest(w->xxh);
        XXH3_64bits_reset(w->xxh);
        w->cur++;
        w->cur_pos = 0;
    }
}

int ec_partfile_writer_open(const char *dir, const ec_partfile_meta *meta,
                            ec_partfile_writer **out)
{
    ec_partfile_writer *w = NULL;
    ec_partfile_meta check;
    unsigned char rnd[8];
    char *tmp = NULL;
    int rc;

    if (!dir || !meta || !out)
        return ec_seterr(EC_EINVAL, "ec_partfile_writer_open: NULL argument");
    check = *meta;
    rc = ec_partfile_layout(&check);
    if (rc < 0)
        return rc;
    if (check.version != EC_PARTFILE_VERSION)
        return ec_seterr(EC_EINVAL, "ec_partfile_writer_open: the writer writes format "
                                    "version %u only, not %u; lay the file out with "
                                    "version 0", EC_PARTFILE_VERSION, check.version);
    if (check.version != meta->version || check.rows != meta->rows ||
        check.row_bytes != meta->row_bytes || check.partitions != meta->partitions ||
        check.stride != meta->stride || check.blocks != meta->blocks ||
        check.block_table_off != meta->block_table_off ||
        check.data_off != meta->data_off || check.file_size != meta->file_size)
        return ec_seterr(EC_EINVAL, "ec_partfile_writer_open: meta was not filled by "
                                    "ec_partfile_layout(); call it first");

    w = calloc(1, sizeof(*w));
    if (!w) {
        rc = ec_seterr(EC_ENOMEM, "partition writer: out of memory");
        goto fail;
    }
    w->fd = -1;
    w->meta = check;
    w->total = check.rows * check.row_bytes;
    w->checksums = calloc(check.partitions ? check.partitions : 1, sizeof(uint64_t));
    w->xxh = XXH3_createState();
    w->dir = strdup(dir);
    /* blocks * 8 fits: ec_partfile_layout checked it. */
    w->block_sums = calloc(check.blocks ? (size_t)check.blocks : 1, BLOCK_ENTRY);
    w->blk_buf = malloc(BLOCK);
    if (!w->checksums || !w->xxh || !w->dir || !w->block_sums || !w->blk_buf) {
        rc = ec_seterr(EC_ENOMEM, "partition writer for %llu partitions: out of memory",
                       (unsigned long long)check.partitions);
        goto fail;
    }
    XXH3_64bits_reset(w->xxh);

    for (int attempt = 0;; attempt++) {
        if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
            rc = ec_seterr_errno(EC_EIO, errno, "partition writer: getrandom failed");
            goto fail;
        }
        for (int i = 0; i < 8; i++)
            snprintf(w->hex + 2 * i, 3, "%02x", rnd[i]);
        free(tmp);
        tmp = path_join(dir, w->hex, ".tmp");
        if (!tmp) {
            rc = ec_seterr(EC_ENOMEM, "partition writer: out of memory");
            goto fail;
        }
        w->fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (w->fd >= 0)
            break;
        if (errno != EEXIST || attempt >= 8) {
            rc = ec_seterr_errno(errno_code(errno), errno,
                                 "cannot create partition file %s; check that the data "
                                 "directory exists and is writable", tmp);
            goto fail;
        }
    }
    /* Reserve the space now so a full disk fails before any data moves;
     * file systems without fallocate just grow the file as we write. */
    if (check.file_size > 0 && fallocate(w->fd, 0, 0, (off_t)check.file_size) != 0 &&
        errno != EOPNOTSUPP && errno != ENOSYS && errno != EINVAL) {
        rc = ec_seterr_errno(errno_code(errno), errno,
                             "cannot reserve %llu bytes for partition file %s",
                             (unsigned long long)check.file_size, tmp);
        goto fail;
    }
    writer_advance(w);
    free(tmp);
    *out = w;
    return 0;

fail:
    if (w && w->fd >= 0) {
        close(w->fd);
        unlink(tmp);
    }
    free(tmp);
    if (w) {
        XXH3_freeState(w->xxh);
        free(w->checksums);
        free(w->block_sums);
        free(w->blk_buf);
        free(w->dir);
        free(w);
    }
    return rc;
}

int ec_partfile_writer_append(ec_partfile_writer *w, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    int rc;

    if (!w || (!buf && len) || w->state != W_OPEN)
        return ec_seterr(EC_EINVAL, "ec_partfile_writer_append: bad writer or buffer");
    if (len > w->total - w->written)
        return ec_seterr(EC_EINVAL,
                         "partition writer: %zu more bytes would exceed the tensor's "
                         "%llu bytes (%llu written)", len, (unsigned long long)w->total,
                         (unsigned long long)w->written);
    while (len > 0) {
        uint64_t room = ec_partfile_part_length(&w->meta, w->cur) - w->cur_pos;
        size_t n = len < room ? len : (size_t)room;

        assert(w->cur < w->meta.partitions && room > 0);
        rc = pwrite_all(w->fd, p, n, ec_partfile_part_offset(&w->meta, w->cur) + w->cur_pos);
        if (rc < 0)
            return ec_seterr_errno(errno_code(-rc), -rc,
                                   "cannot write partition file %s/%s%s.tmp", w->dir,
                                   w->hex, EC_PARTFILE_EXT);
        XXH3_64bits_update(w->xxh, p, n);
        blocks_feed(w, p, n);
        p += n;
        len -= n;
        w->written += n;
        w->cur_pos += n;
        writer_advance(w);
    }
    return 0;
}

int ec_partfile_writer_set_origin(ec_partfile_writer *w, const ec_partfile_origin *o,
                                  const char *params_json, bool *params_lost_out)
{
    int rc;

    if (!w || !o || w->state != W_OPEN)
        return ec_seterr(EC_EINVAL, "ec_partfile_writer_set_origin: bad writer or NULL "
                                    "origin");
    rc = ec_partfile_origin_encode(o, params_json, w->origin, sizeof(w->origin),
                                   params_lost_out);
    if (rc < 0)
        return rc;
    w->has_origin = true;
    return 0;
}

static int fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot open directory %s to fsync it", dir);
    if (fsync(fd) != 0 && errno != EINVAL)
        rc = ec_seterr_errno(EC_EIO, errno, "cannot fsync directory %s", dir);
    close(fd);
    return rc;
}

int ec_partfile_writer_commit(ec_partfile_writer *w, char *name_out, size_t name_len,
                              uint64_t *header_checksum_out, uint64_t *part_checksums)
{
    static const unsigned char zeros[EC_PARTFILE_BLOCK];
    const ec_partfile_meta *m;
    unsigned char *page = NULL, *table = NULL;
    struct ec_partfile_header h;
    uint64_t table_len, table_bytes, btable_len, btable_pad, hsum;
    char *tmp = NULL, *fin = NULL;
    int rc;

    if (!w || w->state != W_OPEN || !name_out)
        return ec_seterr(EC_EINVAL, "ec_partfile_writer_commit: bad writer or NULL name");
    m = &w->meta;
    if (name_len < strlen(w->hex) + sizeof(EC_PARTFILE_EXT))
        return ec_seterr(EC_EINVAL, "ec_partfile_writer_commit: name buffer of %zu bytes "
                                    "is too small", name_len);
    if (w->written != w->total)
        return ec_seterr(EC_EINVAL, "partition writer: %llu of %llu bytes were written; "
                                    "append all rows before committing",
                         (unsigned long long)w->written, (unsigned long long)w->total);
    assert(w->cur == m->partitions);
    assert(w->blk == m->blocks && w->blk_fill == 0);

    tmp = path_join(w->dir, w->hex, ".tmp");
    fin = path_join(w->dir, w->hex, "");
    table_bytes = m->block_table_off - HDR_PAGE;
    table_len = m->partitions * ENTRY_SIZE;
    btable_len = m->blocks * BLOCK_ENTRY;
    btable_pad = m->data_off - m->block_table_off - btable_len;
    assert(btable_pad < BLOCK);
    page = calloc(1, HDR_PAGE);
    table = calloc(1, table_bytes ? table_bytes : 1);
    if (!tmp || !fin || !page || !table) {
        rc = ec_seterr(EC_ENOMEM, "partition writer: out of memory for a table of %llu "
                                  "bytes", (unsigned long long)table_bytes);
        goto fail;
    }
    for (uint64_t p = 0; p < m->partitions; p++) {
        struct ec_partfile_entry e = {
            .offset = ec_partfile_part_offset(m, p),
            .length = ec_partfile_part_length(m, p),
            .checksum = w->checksums[p],
        };
        memcpy(table + p * ENTRY_SIZE, &e, sizeof(e));
    }

    memset(&h, 0, sizeof(h));
    h.magic = EC_PARTFILE_MAGIC;
    h.version = m->version;
    h.dtype = (uint32_t)m->dtype;
    h.ndim = m->ndim;
    for (uint32_t i = 0; i < m->ndim; i++)
        h.shape[i] = m->shape[i];
    h.rows = m->rows;
    h.row_bytes = m->row_bytes;
    h.rows_per_partition = m->rows_per_partition;
    h.partitions = m->partitions;
    h.stride = m->stride;
    h.table_off = HDR_PAGE;
    h.data_off = m->data_off;
    h.file_size = m->file_size;
    h.table_checksum = ec_checksum(table, (size_t)table_len);
    h.block_table_off = m->block_table_off;
    h.blocks = m->blocks;
    h.block_table_checksum = ec_checksum(w->block_sums, (size_t)btable_len);
    memcpy(page, &h, sizeof(h));
    if (w->has_origin)
        memcpy(page + EC_PARTFILE_ORIGIN_OFF, w->origin, sizeof(w->origin));
    hsum = header_checksum_of(page);
    memcpy(page + offsetof(struct ec_partfile_header, header_checksum), &hsum, sizeof(hsum));

    /* Zero padding up to file_size (the last partition's tail). */
    if (ftruncate(w->fd, (off_t)m->file_size) != 0) {
        rc = ec_seterr_errno(errno_code(errno), errno, "cannot size partition file %s", tmp);
        goto fail;
    }
    if ((rc = pwrite_all(w->fd, table, (size_t)table_bytes, HDR_PAGE)) < 0 ||
        (rc = pwrite_all(w->fd, w->block_sums, (size_t)btable_len, m->block_table_off)) < 0 ||
        (rc = pwrite_all(w->fd, zeros, (size_t)btable_pad,
                         m->block_table_off + btable_len)) < 0 ||
        (rc = pwrite_all(w->fd, page, HDR_PAGE, 0)) < 0) {
        rc = ec_seterr_errno(errno_code(-rc), -rc, "cannot write partition file %s", tmp);
        goto fail;
    }
    if (fsync(w->fd) != 0) {
        rc = ec_seterr_errno(errno_code(errno), errno, "cannot fsync partition file %s", tmp);
        goto fail;
    }
    if (renameat2(AT_FDCWD, tmp, AT_FDCWD, fin, RENAME_NOREPLACE) != 0) {
        int e = errno;
        /* File systems without RENAME_NOREPLACE: the random name makes a
         * clash practically impossible, so a plain rename will do. */
        if ((e != EINVAL && e != ENOSYS) || rename(tmp, fin) != 0) {
            rc = ec_seterr_errno(EC_EIO, e == EINVAL || e == ENOSYS ? errno : e,
                                 "cannot rename %s to %s", tmp, fin);
            goto fail;
        }
    }
    w->state = W_RENAMED;
    rc = fsync_dir(w->dir);
    if (rc < 0)
        goto fail;

    w->state = W_DONE;
    snprintf(name_out, name_len, "%s%s", w->hex, EC_PARTFILE_EXT);
    if (header_checksum_out)
        *header_checksum_out = hsum;
    if (part_checksums && m->partitions)
        memcpy(part_checksums, w->checksums, (size_t)m->partitions * sizeof(uint64_t));
    rc = 0;

fail:
    free(page);
    free(table);
    free(tmp);
    free(fin);
    return rc;
}

void ec_partfile_writer_close(ec_partfile_writer *w)
{
    char *path = NULL;

    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    if (w->state == W_OPEN)
        path = path_join(w->dir, w->hex, ".tmp");
    else if (w->state == W_RENAMED) /* commit failed after the rename */
        path = path_join(w->dir, w->hex, "");
    if (path)
        unlink(path);
    free(path);
    XXH3_freeState(w->xxh);
    free(w->checksums);
    free(w->block_sums);
    free(w->blk_buf);
    free(w->dir);
    free(w);
}

/* ------------------------------------------------------------------ */
/* Reader                                                              */

#define CORRUPT(...) ec_seterr(EC_ECORRUPT, __VA_ARGS__)

/* Validate the header page; fill *h and *m. */
static int check_header(const char *path, const unsigned char *page, uint64_t st_size,
                        struct ec_partfile_header *h, ec_partfile_meta *m)
{
    uint64_t sum;

    memcpy(h, page, sizeof(*h));
    if (h->magic != EC_PARTFILE_MAGIC)
        return CORRUPT("%s is not an embcache partition file (bad magic); it may have "
                       "been overwritten: re-import the model version", path);
    if (h->version != EC_PARTFILE_VERSION && h->version != EC_PARTFILE_VERSION_1)
        return CORRUPT("partition file %s has format version %u; this build reads "
                       "versions %u and %u: re-import the model version with this build",
                       path, h->version, EC_PARTFILE_VERSION_1, EC_PARTFILE_VERSION);
    sum = header_checksum_of(page);
    if (sum != h->header_checksum)
        return CORRUPT("partition file %s: header checksum mismatch (stored %016llx, "
                       "computed %016llx); the file is damaged: re-import the model "
                       "version", path, (unsigned long long)h->header_checksum,
                       (unsigned long long)sum);
    if (!ec_dtype_valid(h->dtype))
        return CORRUPT("partition file %s: invalid dtype %u", path, h->dtype);
    if (h->ndim > EC_MAX_DIMS)
        return CORRUPT("partition file %s: %u dimensions, at most %d", path, h->ndim,
                       EC_MAX_DIMS);
    for (uint32_t i = h->ndim; i < EC_MAX_DIMS; i++)
        if (h->shape[i] != 0)
            return CORRUPT("partition file %s: unused dimension %u is not zero", path, i);
    if (h->reserved0 != 0)
        return CORRUPT("partition file %s: reserved header field is not zero", path);
    if (h->rows_per_partition == 0)
        return CORRUPT("partition file %s: rows_per_partition is 0", path);

    if (h->version == EC_PARTFILE_VERSION_1 && h->block_table_checksum != 0)
        return CORRUPT("partition file %s: format version 1 with a block table checksum",
                       path);

    memset(m, 0, sizeof(*m));
    m->version = h->version;
    m->dtype = (ec_dtype)h->dtype;
    m->ndim = h->ndim;
    memcpy(m->shape, h->shape, sizeof(m->shape));
    m->rows_per_partition = h->rows_per_partition;
    if (ec_partfile_layout(m) < 0)
        return CORRUPT("partition file %s: shape overflows 64-bit sizes", path);
#define SAME(field)                                                                       \
    if (m->field != h->field)                                                             \
        return CORRUPT("partition file %s: " #field " is %llu, the shape implies %llu",   \
                       path, (unsigned long long)h->field, (unsigned long long)m->field);
    SAME(rows)
    SAME(row_bytes)
    SAME(partitions)
    SAME(stride)
    SAME(blocks)
    SAME(block_table_off)
    SAME(data_off)
    SAME(file_size)
#undef SAME
    if (h->table_off != HDR_PAGE)
        return CORRUPT("partition file %s: table offset %llu, expected %u", path,
                       (unsigned long long)h->table_off, HDR_PAGE);
    if (m->partitions > UINT32_MAX || m->row_bytes > UINT32_MAX ||
        m->rows_per_partition * m->row_bytes > UINT32_MAX)
        return CORRUPT("partition file %s: partitions larger than %u bytes or more than "
                       "%u of them", path, UINT32_MAX, UINT32_MAX);
    if (m->file_size != st_size)
        return CORRUPT("partition file %s is %llu bytes, its header says %llu (truncated "
                       "or appended to after import?); re-import the model version", path,
                       (unsigned long long)st_size, (unsigned long long)m->file_size);
    m->header_checksum = h->header_checksum;
    return 0;
}

/* Read and validate the table of a file whose header passed check_header.
 * Fills checksums (may be NULL). */
static int load_table(int fd, const char *path, const ec_partfile_meta *m,
                      uint64_t table_checksum, uint64_t *checksums)
{
    uint64_t len = m->partitions * ENTRY_SIZE;
    unsigned char *table = malloc(len ? (size_t)len : 1);
    ssize_t got;
    int rc = 0;

    if (!table)
        return ec_seterr(EC_ENOMEM, "partition file %s: out of memory for its table of "
                                    "%llu bytes", path, (unsigned long long)len);
    got = pread_full(fd, table, (size_t)len, HDR_PAGE);
    if (got < 0) {
        rc = ec_seterr_errno(EC_EIO, (int)-got, "cannot read the table of partition file %s",
                             path);
        goto out;
    }
    if ((uint64_t)got != len) {
        rc = ec_seterr(EC_EIO, "partition file %s is shorter than its header says "
                               "(truncated after import?)", path);
        goto out;
    }
    if (ec_checksum(table, (size_t)len) != table_checksum) {
        rc = CORRUPT("partition file %s: table checksum mismatch; the file is damaged: "
                     "re-import the model version", path);
        goto out;
    }
    for (uint64_t p = 0; p < m->partitions; p++) {
        struct ec_partfile_entry e;
        memcpy(&e, table + p * ENTRY_SIZE, sizeof(e));
        if (e.offset != ec_partfile_part_offset(m, p) ||
            e.length != ec_partfile_part_length(m, p) || e.reserved != 0) {
            rc = CORRUPT("partition file %s: table entry %llu (offset %llu, length %llu) "
                         "does not match the layout (offset %llu, length %llu)", path,
                         (unsigned long long)p, (unsigned long long)e.offset,
                         (unsigned long long)e.length,
                         (unsigned long long)ec_partfile_part_offset(m, p),
                         (unsigned long long)ec_partfile_part_length(m, p));
            goto out;
        }
        if (checksums)
            checksums[p] = e.checksum;
    }
out:
    free(table);
    return rc;
}

/* Read and validate the block table of a version-2 file whose header passed
 * check_header, in chunks through one XXH3 state. Fills sums (may be NULL:
 * then only the checksum is checked). */
static int load_blocks(int fd, const char *path, const ec_partfile_meta *m,
                       uint64_t block_table_checksum, uint64_t *sums)
{
    enum { CHUNK = 64 * 1024 };
    uint64_t len = m->blocks * BLOCK_ENTRY, done = 0, sum;
    unsigned char *chunk = NULL;
    XXH3_state_t *st = XXH3_createState();
    int rc = 0;

    if (!sums)
        chunk = malloc(CHUNK);
    if (!st || (!sums && !chunk)) {
        rc = ec_seterr(EC_ENOMEM, "partition file %s: out of memory reading its block table",
                       path);
        goto out;
    }
    XXH3_64bits_reset(st);
    while (done < len) {
        size_t n = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
        unsigned char *dst = sums ? (unsigned char *)sums + done : chunk;
        ssize_t got = pread_full(fd, dst, n, m->block_table_off + done);

        if (got < 0) {
            rc = ec_seterr_errno(EC_EIO, (int)-got, "cannot read the block table of "
                                 "partition file %s", path);
            goto out;
        }
        if ((size_t)got != n) {
            rc = ec_seterr(EC_EIO, "partition file %s is shorter than its header says "
                                   "(truncated after import?)", path);
            goto out;
        }
        XXH3_64bits_update(st, dst, n);
        done += n;
    }
    sum = (uint64_t)XXH3_64bits_digest(st);
    if (sum != block_table_checksum)
        rc = CORRUPT("partition file %s: block table checksum mismatch (stored %016llx, "
                     "computed %016llx); the file is damaged: re-import the model version",
                     path, (unsigned long long)block_table_checksum,
                     (unsigned long long)sum);
out:
    XXH3_freeState(st);
    free(chunk);
    return rc;
}

/* Read the header page of fd and validate the header, the table and (v2)
 * the block table. With `opened`, the file must still be the one opened as
 * *opened (same header checksum), checked before either table is read.
 * Fills *m, checksums and block_sums (either may be NULL). */
static int validate_fd(int fd, const char *path, const ec_partfile_meta *opened,
                       ec_partfile_meta *m, uint64_t *checksums, uint64_t *block_sums)
{
    unsigned char *page = NULL;
    struct ec_partfile_header h;
    struct stat st;
    ssize_t got;
    int rc;

    if (fstat(fd, &st) != 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot stat partition file %s", path);
    if (!S_ISREG(st.st_mode))
        return CORRUPT("partition file %s is not a regular file", path);
    page = malloc(HDR_PAGE);
    if (!page)
        return ec_seterr(EC_ENOMEM, "out of memory reading partition file %s", path);
    got = pread_full(fd, page, HDR_PAGE, 0);
    if (got < 0) {
        rc = ec_seterr_errno(EC_EIO, (int)-got, "cannot read partition file %s", path);
        goto out;
    }
    if (got < (ssize_t)HDR_PAGE) {
        rc = CORRUPT("partition file %s is %lld bytes, shorter than its %u-byte header "
                     "(truncated?); re-import the model version", path, (long long)got,
                     HDR_PAGE);
        goto out;
    }
    rc = check_header(path, page, (uint64_t)st.st_size, &h, m);
    if (rc < 0)
        goto out;
    if (opened && (m->header_checksum != opened->header_checksum ||
                   m->partitions != opened->partitions || m->blocks != opened->blocks)) {
        rc = CORRUPT("partition file %s changed since it was opened; reopen it", path);
        goto out;
    }
    rc = load_table(fd, path, m, h.table_checksum, checksums);
    if (rc == 0 && m->version >= 2)
        rc = load_blocks(fd, path, m, h.block_table_checksum, block_sums);
out:
    free(page);
    return rc;
}

int ec_partfile_open(const char *path, ec_partfile_meta *meta, int *fd_out)
{
    ec_partfile_meta m;
    int fd, rc;

    if (!path || !meta || !fd_out)
        return ec_seterr(EC_EINVAL, "ec_partfile_open: NULL argument");
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0 && (errno == EMFILE || errno == ENFILE))
        return ec_seterr_errno(EC_EIO, errno, "cannot open partition file %s: the process "
                               "is out of file descriptors (raise its RLIMIT_NOFILE)", path);
    if (fd < 0 && errno == ELOOP)
        return ec_seterr_errno(EC_EIO, errno, "cannot open partition file %s: it is a "
                               "symbolic link, which embcached never follows", path);
    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot open partition file %s; was it "
                               "removed from the data directory?", path);
    rc = validate_fd(fd, path, NULL, &m, NULL, NULL);
    if (rc < 0)
        goto fail;
    *meta = m;
    *fd_out = fd;
    return 0;

fail:
    close(fd);
    return rc;
}

int ec_partfile_read_table(int fd, const ec_partfile_meta *meta, uint64_t *checksums)
{
    char name[512];
    ec_partfile_meta m;

    if (fd < 0 || !meta || (!checksums && meta->partitions))
        return ec_seterr(EC_EINVAL, "ec_partfile_read_table: bad argument");
    fd_name(fd, name, sizeof(name));
    return validate_fd(fd, name, meta, &m, checksums, NULL);
}

int ec_partfile_read_block_sums(int fd, const ec_partfile_meta *meta, uint64_t *sums)
{
    char name[512];
    ec_partfile_meta m;

    if (fd < 0 || !meta || (!sums && meta->blocks))
        return ec_seterr(EC_EINVAL, "ec_partfile_read_block_sums: bad argument");
    fd_name(fd, name, sizeof(name));
    if (meta->version == EC_PARTFILE_VERSION_1)
        return ec_seterr(EC_EVERSION,
                         "partition file %s is format version 1 and has no block checksums; "
                         "it is served by whole partitions (run `embcache upgrade` on its "
                         "model version, or re-import it, to read it by rows)", name);
    if (meta->version != EC_PARTFILE_VERSION)
        return ec_seterr(EC_EINVAL, "ec_partfile_read_block_sums: meta of format version "
                                    "%u was not filled by ec_partfile_open()", meta->version);
    return validate_fd(fd, name, meta, &m, NULL, sums);
}

int ec_partfile_read_partition(int fd, const ec_partfile_meta *meta, uint64_t p, void *buf,
                               uint64_t expected)
{
    char name[512];
    uint64_t len, off, sum;
    ssize_t got;

    if (fd < 0 || !meta || p >= meta->partitions)
        return ec_seterr(EC_EINVAL, "ec_partfile_read_partition: partition %llu of %llu",
                         (unsigned long long)p,
                         (unsigned long long)(meta ? meta->partitions : 0));
    len = ec_partfile_part_length(meta, p);
    off = ec_partfile_part_offset(meta, p);
    if (len > 0 && !buf)
        return ec_seterr(EC_EINVAL, "ec_partfile_read_partition: buf is NULL");
    got = len ? pread_full(fd, buf, (size_t)len, off) : 0;
    if (got < 0)
        return ec_seterr_errno(EC_EIO, (int)-got, "cannot read partition %llu of %s",
                               (unsigned long long)p, fd_name(fd, name, sizeof(name)));
    if ((uint64_t)got != len)
        return ec_seterr(EC_EIO,
                         "partition file %s is shorter than its header says (truncated "
                         "after import?): partition %llu needs %llu bytes at %llu, got "
                         "%lld; re-import the model version",
                         fd_name(fd, name, sizeof(name)), (unsigned long long)p,
                         (unsigned long long)len, (unsigned long long)off, (long long)got);
    sum = ec_checksum(len ? buf : "", (size_t)len);
    if (sum != expected)
        return ec_seterr(EC_ECHECKSUM,
                         "partition %llu of %s failed its checksum (expected %016llx, "
                         "computed %016llx): the data on disk is damaged; re-import the "
                         "model version", (unsigned long long)p,
                         fd_name(fd, name, sizeof(name)), (unsigned long long)expected,
                         (unsigned long long)sum);
    return 0;
}

/* Read the header page of a file opened as *meta (it must still be that
 * file) and decode its origin record into *out; the record's raw bytes go
 * to rec (HDR_PAGE - EC_PARTFILE_ORIGIN_OFF of them) when it is not NULL. */
static int read_origin_rec(int fd, const ec_partfile_meta *meta, unsigned char *rec,
                           ec_partfile_origin *out)
{
    unsigned char *page;
    char name[512];
    uint64_t stored;
    ssize_t got;
    int rc;

    if (fd < 0 || !meta || !out)
        return ec_seterr(EC_EINVAL, "ec_partfile_read_origin: bad argument");
    page = malloc(HDR_PAGE);
    if (!page)
        return ec_seterr(EC_ENOMEM, "out of memory reading a partition file's header");
    got = pread_full(fd, page, HDR_PAGE, 0);
    if (got < 0) {
        rc = ec_seterr_errno(EC_EIO, (int)-got, "cannot read the header of partition file %s",
                             fd_name(fd, name, sizeof(name)));
        goto out;
    }
    memcpy(&stored, page + offsetof(struct ec_partfile_header, header_checksum),
           sizeof(stored));
    if (got != (ssize_t)HDR_PAGE || stored != meta->header_checksum ||
        header_checksum_of(page) != stored) {
        rc = CORRUPT("partition file %s changed since it was opened; reopen it",
                     fd_name(fd, name, sizeof(name)));
        goto out;
    }
    rc = ec_partfile_origin_decode(page + EC_PARTFILE_ORIGIN_OFF,
                                   HDR_PAGE - EC_PARTFILE_ORIGIN_OFF, out);
    if (rc < 0) {
        rc = ec_adderr(rc, "partition file %s", fd_name(fd, name, sizeof(name)));
        goto out;
    }
    if (rec)
        memcpy(rec, page + EC_PARTFILE_ORIGIN_OFF, HDR_PAGE - EC_PARTFILE_ORIGIN_OFF);
out:
    free(page);
    return rc;
}

int ec_partfile_read_origin(int fd, const ec_partfile_meta *meta, ec_partfile_origin *out)
{
    return read_origin_rec(fd, meta, NULL, out);
}

bool ec_partfile_range_on_disk(int fd, uint64_t off, uint64_t len)
{
    off_t d, h;

    if (len == 0)
        return true;
    d = lseek(fd, (off_t)off, SEEK_DATA);
    if (d < 0)
        return errno != ENXIO; /* ENXIO: only a hole from off to the end */
    if ((uint64_t)d != off)
        return false;
    h = lseek(fd, (off_t)off, SEEK_HOLE);
    return h < 0 || (uint64_t)h >= off + len;
}

int ec_partfile_verify(int fd, const ec_partfile_meta *meta, uint64_t *part_checksums)
{
    return ec_partfile_verify_present(fd, meta, part_checksums, NULL);
}

int ec_partfile_verify_present(int fd, const ec_partfile_meta *meta, uint64_t *part_checksums,
                               uint64_t *absent)
{
    enum { CHUNK = 1024 * 1024 };
    char name[512];
    ec_partfile_meta m;
    uint64_t *sums = NULL, *bsums = NULL;
    unsigned char *buf = NULL;
    XXH3_state_t *st = NULL;
    int rc;

    static_assert(CHUNK % EC_PARTFILE_BLOCK == 0, "chunks are whole blocks");
    if (fd < 0 || !meta || meta->rows_per_partition == 0)
        return ec_seterr(EC_EINVAL, "ec_partfile_verify: bad argument");
    fd_name(fd, name, sizeof(name));
    sums = calloc(meta->partitions ? meta->partitions : 1, sizeof(*sums));
    bsums = calloc(meta->blocks ? meta->blocks : 1, BLOCK_ENTRY);
    buf = malloc(CHUNK);
    st = XXH3_createState();
    if (!sums || !bsums || !buf || !st) {
        rc = ec_seterr(EC_ENOMEM, "partition file %s: out of memory for the checksums of "
                                  "%llu partitions and %llu blocks", name,
                       (unsigned long long)meta->partitions, (unsigned long long)meta->blocks);
        goto out;
    }
    /* The header again (the same file), the table, the block table. */
    rc = validate_fd(fd, name, meta, &m, sums, meta->version >= 2 ? bsums : NULL);
    if (rc < 0)
        goto out;
    if (absent)
        *absent = 0;
    for (uint64_t p = 0; p < m.partitions; p++) {
        uint64_t len = ec_partfile_part_length(&m, p), off = ec_partfile_part_offset(&m, p);
        /* The partition and its zero padding: to stride, the last to a page. */
        uint64_t extent = p + 1 < m.partitions ? m.stride : (len + BLOCK - 1) / BLOCK * BLOCK;
        uint64_t done = 0, sum;

        if (absent && !ec_partfile_range_on_disk(fd, off, len)) {
            ++*absent; /* not here yet: its bytes are read as zeros, so unchecked */
            continue;
        }

        XXH3_64bits_reset(st);
        while (done < extent) {
            size_t n = extent - done < CHUNK ? (size_t)(extent - done) : CHUNK;
            ssize_t got = pread_full(fd, buf, n, off + done);

            if (got < 0) {
                rc = ec_seterr_errno(EC_EIO, (int)-got, "cannot read partition %llu of %s",
                                     (unsigned long long)p, name);
                goto out;
            }
            if ((size_t)got != n) {
                rc = ec_seterr(EC_EIO, "partition file %s is shorter than its header says "
                                       "(truncated?): partition %llu", name,
                               (unsigned long long)p);
                goto out;
            }
            if (done < len)
                XXH3_64bits_update(st, buf, len - done < n ? (size_t)(len - done) : n);
            for (size_t b = 0; m.version >= 2 && b < n; b += BLOCK) {
                uint64_t blk = (off + done + b - m.data_off) / BLOCK;
                if (blk >= m.blocks || ec_checksum(buf + b, BLOCK) != bsums[blk]) {
                    rc = ec_seterr(EC_ECHECKSUM, "block %llu (partition %llu) of %s failed its "
                                   "checksum: the data on disk is damaged",
                                   (unsigned long long)blk, (unsigned long long)p, name);
                    goto out;
                }
            }
            done += n;
        }
        sum = (uint64_t)XXH3_64bits_digest(st);
        if (sum != sums[p]) {
            rc = ec_seterr(EC_ECHECKSUM, "partition %llu of %s failed its checksum (expected "
                           "%016llx, computed %016llx): the data on disk is damaged",
                           (unsigned long long)p, name, (unsigned long long)sums[p],
                           (unsigned long long)sum);
            goto out;
        }
    }
    if (part_checksums && m.partitions)
        memcpy(part_checksums, sums, (size_t)m.partitions * sizeof(*sums));
    rc = 0;
out:
    XXH3_freeState(st);
    free(buf);
    free(bsums);
    free(sums);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Upgrade                                                             */

int ec_partfile_upgrade(const char *src_path, const char *dir, const ec_partfile_origin *origin,
                        const char *params_json, char *name_out, size_t name_len,
                        uint64_t *header_checksum_out, uint64_t *part_checksums)
{
    ec_partfile_meta src, m;
    ec_partfile_writer *w = NULL;
    ec_partfile_origin *kept = NULL;
    uint64_t *sums = NULL, max_len, hsum;
    unsigned char *buf = NULL;
    int fd = -1, rc;

    if (!src_path || !dir || !name_out)
        return ec_seterr(EC_EINVAL, "ec_partfile_upgrade: NULL argument");
    rc = ec_partfile_open(src_path, &src, &fd);
    if (rc < 0)
        return ec_adderr(rc, "cannot upgrade %s", src_path);
    sums = calloc(src.partitions ? src.partitions : 1, sizeof(*sums));
    /* check_header bounds a partition by UINT32_MAX bytes. A partition is
     * the unit the daemon caches, so one of them fits in memory. */
    max_len = src.rows_per_partition * src.row_bytes;
    buf = malloc(max_len ? (size_t)max_len : 1);
    if (!sums || !buf) {
        rc = ec_seterr(EC_ENOMEM, "cannot upgrade partition file %s: out of memory for a "
                                  "partition of %llu bytes", src_path,
                       (unsigned long long)max_len);
        goto out;
    }
    rc = ec_partfile_read_table(fd, &src, sums);
    if (rc < 0) {
        rc = ec_adderr(rc, "cannot upgrade %s", src_path);
        goto out;
    }

    memset(&m, 0, sizeof(m));
    m.dtype = src.dtype;
    m.ndim = src.ndim;
    memcpy(m.shape, src.shape, sizeof(m.shape));
    m.rows_per_partition = src.rows_per_partition;
    rc = ec_partfile_layout(&m); /* the current version */
    if (rc < 0)
        goto out;
    assert(m.rows == src.rows && m.partitions == src.partitions && m.stride == src.stride);
    rc = ec_partfile_writer_open(dir, &m, &w);
    if (rc < 0)
        goto out;
    /* The origin: the caller's, or the source's, byte for byte (decoded
     * first: a malformed record is not carried over). */
    if (origin) {
        rc = ec_partfile_writer_set_origin(w, origin, params_json, NULL);
    } else if (!(kept = malloc(sizeof(*kept)))) {
        rc = ec_seterr(EC_ENOMEM, "cannot upgrade %s: out of memory", src_path);
    } else {
        rc = read_origin_rec(fd, &src, w->origin, kept);
        w->has_origin = rc == 0 && kept->present;
    }
    if (rc < 0) {
        rc = ec_adderr(rc, "cannot upgrade %s", src_path);
        goto out;
    }

    /* Each partition is verified whole before any of it is written. */
    for (uint64_t p = 0; p < src.partitions; p++) {
        uint64_t len = ec_partfile_part_length(&src, p);

        rc = ec_partfile_read_partition(fd, &src, p, buf, sums[p]);
        if (rc < 0) {
            rc = ec_adderr(rc, "refusing to upgrade %s, nothing was written", src_path);
            goto out;
        }
        rc = ec_partfile_writer_append(w, buf, (size_t)len);
        if (rc < 0)
            goto out;
        assert(w->cur > p);
        if (w->checksums[p] != sums[p]) {
            rc = ec_seterr(EC_EINTERNAL, "upgrading %s: partition %llu hashed to %016llx "
                                         "when written and %016llx when read; a bug, "
                                         "please report", src_path, (unsigned long long)p,
                           (unsigned long long)w->checksums[p],
                           (unsigned long long)sums[p]);
            goto out;
        }
    }
    rc = ec_partfile_writer_commit(w, name_out, name_len, &hsum, part_checksums);
    if (rc < 0)
        goto out;
    if (header_checksum_out)
        *header_checksum_out = hsum;

out:
    ec_partfile_writer_close(w); /* after a failure: unlinks what it wrote */
    free(kept);
    free(buf);
    free(sums);
    close(fd);
    return rc;
}
