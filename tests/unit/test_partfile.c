/*
 * test_partfile.c - unit tests of the partition file format (core/partfile.c):
 * planning, layout arithmetic (versions 1 and 2), a byte-exact
 * write/open/read round trip with the block checksums recomputed over the
 * file, row and block arithmetic against brute force, a hand-written
 * version-1 file, its upgrade to version 2, and every validation failure of
 * the reader (header, table, block table, data, size); the origin record
 * (written, read back, ignored by the other readers, kept or filled by an
 * upgrade, every malformed field refused) and the whole-file check
 * ec_partfile_verify. Single-threaded; works in a temporary directory.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "core/partfile.h"
#include "tests/testutil.h"

#define KiB 1024ull
#define MiB (1024ull * 1024ull)

/* ------------------------------------------------------------------ */
/* Planning                                                            */

static void test_plan_default_target(void **state)
{
    uint64_t rpp;
    (void)state;

    /* f32 rows of 1 element: 1 MiB / 4 = 262144 rows, a multiple of 1024. */
    assert_int_equal(ec_partfile_plan(1000000, 4, 0, &rpp), 0);
    assert_int_equal(rpp, 262144);
    /* target 0 means 1 MiB */
    assert_int_equal(ec_partfile_plan(1000000, 4, MiB, &rpp), 0);
    assert_int_equal(rpp, 262144);
}

static void test_plan_alignment(void **state)
{
    uint64_t rpp;
    (void)state;

    /* 12-byte rows: 1024 rows make 3 pages; 87381 rows fit 1 MiB -> 87040. */
    assert_int_equal(ec_partfile_plan(1000000, 12, MiB, &rpp), 0);
    assert_int_equal(rpp, 87040);
    assert_int_equal(rpp % 1024, 0);
    assert_true(rpp * 12 <= MiB);
    assert_int_equal(rpp * 12 % 4096, 0);

    /* 3000-byte rows: alignment needs 512 rows (> 349 that fit): no alignment. */
    assert_int_equal(ec_partfile_plan(100000, 3000, MiB, &rpp), 0);
    assert_int_equal(rpp, 349);

    /* 768-byte rows (3 KiB per 4 rows... gcd 256 -> 16 rows make 3 pages). */
    assert_int_equal(ec_partfile_plan(100000, 768, 64 * KiB, &rpp), 0);
    assert_int_equal(rpp, 80); /* 85 fit, rounded down to a multiple of 16 */
    assert_int_equal(rpp * 768 % 4096, 0);
}

static void test_plan_limits(void **state)
{
    uint64_t rpp = 7;
    (void)state;

    /* fewer rows than fit */
    assert_int_equal(ec_partfile_plan(10, 4, MiB, &rpp), 0);
    assert_int_equal(rpp, 10);
    /* a row larger than the target: one row per partition */
    assert_int_equal(ec_partfile_plan(10, 2 * MiB, MiB, &rpp), 0);
    assert_int_equal(rpp, 1);
    /* a row above 4 GiB cannot be a partition */
    rpp = 7;
    assert_int_equal(ec_partfile_plan(10, (uint64_t)UINT32_MAX + 1, MiB, &rpp), EC_ETOOBIG);
    assert_int_equal(rpp, 7); /* untouched on failure */
    assert_non_null(strstr(ec_last_error(), "row"));
    /* too many partitions */
    assert_int_equal(ec_partfile_plan(1ull << 40, 1, 1, &rpp), EC_ETOOBIG);
    /* a huge target is capped at 4 GiB - 1 per partition */
    assert_int_equal(ec_partfile_plan(1ull << 30, 4096, 1ull << 40, &rpp), 0);
    assert_true(rpp * 4096 <= UINT32_MAX);
    /* empty tensors */
    assert_int_equal(ec_partfile_plan(0, 16, MiB, &rpp), 0);
    assert_int_equal(rpp, 1);
    assert_int_equal(ec_partfile_plan(50, 0, MiB, &rpp), 0);
    assert_int_equal(rpp, 50);
    assert_int_equal(ec_partfile_plan(1, 4, MiB, NULL), EC_EINVAL);
}

static void test_layout(void **state)
{
    ec_partfile_meta m = {.dtype = EC_DTYPE_F32, .ndim = 2, .shape = {10, 3},
                          .rows_per_partition = 4};
    (void)state;

    assert_int_equal(ec_partfile_layout(&m), 0);
    assert_int_equal(m.version, EC_PARTFILE_VERSION); /* 0 means the current one */
    assert_int_equal(m.version, 2);
    assert_int_equal(m.rows, 10);
    assert_int_equal(m.row_bytes, 12);
    assert_int_equal(m.partitions, 3);
    assert_int_equal(m.stride, 4096);
    /* header | table (96 bytes, padded) | block table (3 sums, padded) | data */
    assert_int_equal(m.blocks, 3);
    assert_int_equal(m.block_table_off, 8192);
    assert_int_equal(m.data_off, 12288);
    assert_int_equal(m.file_size, 12288 + 3 * 4096);
    assert_int_equal(ec_partfile_part_offset(&m, 2), 12288 + 2 * 4096);
    assert_int_equal(ec_partfile_block_offset(&m, 2), 12288 + 2 * 4096);
    assert_int_equal(ec_partfile_part_length(&m, 0), 48);
    assert_int_equal(ec_partfile_part_length(&m, 2), 24); /* 2 rows */
    assert_int_equal(ec_partfile_row_offset(&m, 9), 12288 + 2 * 4096 + 12);

    /* The same shape laid out as version 1: no block table. */
    ec_partfile_meta v1 = {.version = EC_PARTFILE_VERSION_1, .dtype = EC_DTYPE_F32,
                           .ndim = 2, .shape = {10, 3}, .rows_per_partition = 4};
    assert_int_equal(ec_partfile_layout(&v1), 0);
    assert_int_equal(v1.version, 1);
    assert_int_equal(v1.blocks, 0);
    assert_int_equal(v1.block_table_off, 0);
    assert_int_equal(v1.data_off, 8192);
    assert_int_equal(v1.file_size, 8192 + 3 * 4096);
    assert_int_equal(ec_partfile_part_offset(&v1, 2), 8192 + 2 * 4096);

    /* 513 blocks need a block table of two pages. */
    ec_partfile_meta big = {.dtype = EC_DTYPE_U8, .ndim = 1, .shape = {513 * 4096},
                            .rows_per_partition = 4096};
    assert_int_equal(ec_partfile_layout(&big), 0);
    assert_int_equal(big.blocks, 513);
    assert_int_equal(big.block_table_off, 4096 + 513 * 32 / 4096 * 4096 + 4096);
    assert_int_equal(big.data_off, big.block_table_off + 8192);
    assert_int_equal(big.file_size, big.data_off + 513 * 4096);

    /* 0-d: one row of one element */
    ec_partfile_meta s = {.dtype = EC_DTYPE_F64, .ndim = 0, .rows_per_partition = 1};
    assert_int_equal(ec_partfile_layout(&s), 0);
    assert_int_equal(s.rows, 1);
    assert_int_equal(s.row_bytes, 8);
    assert_int_equal(s.partitions, 1);

    /* last partition padded to 4 KiB only */
    ec_partfile_meta b = {.dtype = EC_DTYPE_U8, .ndim = 1, .shape = {3 * 8192 + 1},
                          .rows_per_partition = 8192};
    assert_int_equal(ec_partfile_layout(&b), 0);
    assert_int_equal(b.partitions, 4);
    assert_int_equal(b.blocks, 7);
    assert_int_equal(b.file_size, 12288 + 3 * 8192 + 4096);

    /* no rows: no blocks, no block table */
    ec_partfile_meta e = {.dtype = EC_DTYPE_U8, .ndim = 2, .shape = {0, 5},
                          .rows_per_partition = 1};
    assert_int_equal(ec_partfile_layout(&e), 0);
    assert_int_equal(e.blocks, 0);
    assert_int_equal(e.block_table_off, 4096);
    assert_int_equal(e.data_off, 4096);
    assert_int_equal(e.file_size, 4096);

    ec_partfile_meta bad = {.dtype = EC_DTYPE_F32, .ndim = 2, .shape = {1ull << 62, 1ull << 62},
                            .rows_per_partition = 1};
    assert_int_equal(ec_partfile_layout(&bad), EC_ETOOBIG);
    bad = (ec_partfile_meta){.dtype = EC_DTYPE_INVALID, .ndim = 1, .shape = {1},
                             .rows_per_partition = 1};
    assert_int_equal(ec_partfile_layout(&bad), EC_EINVAL);
    bad = (ec_partfile_meta){.dtype = EC_DTYPE_F32, .ndim = 9, .rows_per_partition = 1};
    assert_int_equal(ec_partfile_layout(&bad), EC_EINVAL);
    bad = (ec_partfile_meta){.dtype = EC_DTYPE_F32, .ndim = 1, .shape = {4}};
    assert_int_equal(ec_partfile_layout(&bad), EC_EINVAL);
    bad = (ec_partfile_meta){.version = 3, .dtype = EC_DTYPE_F32, .ndim = 1, .shape = {4},
                             .rows_per_partition = 1};
    assert_int_equal(ec_partfile_layout(&bad), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "version 3"));
    /* a data region that fits in version 1 but not with its block table */
    bad = (ec_partfile_meta){.version = EC_PARTFILE_VERSION_1, .dtype = EC_DTYPE_U8,
                             .ndim = 1, .shape = {(1ull << 63) - (1ull << 53)},
                             .rows_per_partition = 1ull << 31};
    assert_int_equal(ec_partfile_layout(&bad), 0);
    bad.version = 0;
    assert_int_equal(ec_partfile_layout(&bad), EC_ETOOBIG);
}

static void test_checksum(void **state)
{
    (void)state;
    assert_int_equal(ec_checksum("abc", 3), ec_checksum("abc", 3));
    assert_int_not_equal(ec_checksum("abc", 3), ec_checksum("abd", 3));
}

/* ------------------------------------------------------------------ */
/* Write and read back                                                 */

struct fixture {
    char *dir;
    char path[512];
    ec_partfile_meta meta;
    uint8_t *data;
    uint64_t *sums;
    uint64_t hsum;
};

static int count_files(const char *dir)
{
    char cmd[600];
    FILE *p;
    int n = -1;

    snprintf(cmd, sizeof(cmd), "ls -A '%s' | wc -l", dir);
    p = popen(cmd, "r");
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

/* Write a tensor of the given dtype/shape with odd-sized appends, with an
 * origin record when origin is not NULL (*lost: its params did not fit). */
static void write_file_origin(struct fixture *f, ec_dtype dtype, uint32_t ndim,
                              const uint64_t *shape, uint64_t target,
                              const ec_partfile_origin *origin, const char *params, bool *lost)
{
    ec_partfile_writer *w = NULL;
    char name[64];
    uint64_t n = 1, total, off = 0;
    size_t step = 1;

    free(f->data);
    free(f->sums);
    memset(&f->meta, 0, sizeof(f->meta));
    f->meta.dtype = dtype;
    f->meta.ndim = ndim;
    for (uint32_t i = 0; i < ndim; i++) {
        f->meta.shape[i] = shape[i];
        n *= shape[i];
    }
    total = n * ec_dtype_size(dtype);
    f->meta.rows = ndim ? shape[0] : 1;
    f->meta.row_bytes = ndim ? total / (shape[0] ? shape[0] : 1) : total;
    if (ndim && shape[0] == 0) {
        f->meta.row_bytes = ec_dtype_size(dtype);
        for (uint32_t i = 1; i < ndim; i++)
            f->meta.row_bytes *= shape[i];
    }
    assert_int_equal(ec_partfile_plan(f->meta.rows, f->meta.row_bytes, target,
                                      &f->meta.rows_per_partition), 0);
    assert_int_equal(ec_partfile_layout(&f->meta), 0);
    f->data = malloc(total + 1);
    ect_fill(dtype, 42, 0, n, f->data);
    f->sums = calloc(f->meta.partitions + 1, sizeof(uint64_t));
    assert_int_equal(ec_partfile_writer_open(f->dir, &f->meta, &w), 0);
    if (origin)
        assert_int_equal(ec_partfile_writer_set_origin(w, origin, params, lost), 0);
    while (off < total) {
        size_t len = step < total - off ? step : (size_t)(total - off);
        assert_int_equal(ec_partfile_writer_append(w, f->data + off, len), 0);
        off += len;
        step = step * 3 + 1; /* 1, 4, 13, 40, ... crosses partition edges */
    }
    assert_int_equal(ec_partfile_writer_commit(w, name, sizeof(name), &f->hsum, f->sums), 0);
    ec_partfile_writer_close(w);
    assert_int_equal(strlen(name), 16 + 4);
    assert_string_equal(name + 16, ".ecp");
    snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, name);
}

static void write_file(struct fixture *f, ec_dtype dtype, uint32_t ndim,
                       const uint64_t *shape, uint64_t target)
{
    write_file_origin(f, dtype, ndim, shape, target, NULL, NULL, NULL);
}

#define PAGE_UP(x) (((x) + 4095) / 4096 * 4096)

/* The blocks of [start, start + len) of the data region, by trying every
 * block (a row of no bytes: none, at the block of its offset). */
static void brute_blocks(uint64_t blocks, uint64_t start, uint64_t len, uint64_t *first,
                         uint32_t *n)
{
    *first = start / 4096;
    *n = 0;
    for (uint64_t b = 0; b < blocks; b++) {
        if (len > 0 && b * 4096 < start + len && (b + 1) * 4096 > start) {
            if (*n == 0)
                *first = b;
            (*n)++;
        }
    }
}

/* A version-2 file: its layout fields, its block table against a
 * recomputation over the file's bytes (zero padding included), the table's
 * own padding, and every row's offset (its bytes are there) and blocks
 * (against brute force). */
static void check_blocks(const struct fixture *f, const ec_partfile_meta *m, int fd)
{
    size_t len;
    uint8_t *file = ect_read_file(f->path, &len);
    uint64_t *sums = calloc(m->blocks + 1, sizeof(uint64_t));

    assert_non_null(file);
    assert_int_equal(len, m->file_size);
    assert_int_equal(m->version, EC_PARTFILE_VERSION);
    assert_int_equal(m->block_table_off, 4096 + PAGE_UP(m->partitions * 32));
    assert_int_equal(m->data_off, m->block_table_off + PAGE_UP(m->blocks * 8));
    assert_int_equal(m->blocks * 4096, m->file_size - m->data_off);
    assert_int_equal(ec_partfile_read_block_sums(fd, m, sums), 0);
    for (uint64_t b = 0; b < m->blocks; b++) {
        if (sums[b] != ec_checksum(file + m->data_off + b * 4096, 4096))
            fail_msg("block %llu of %llu: stored %016llx, the file's bytes hash to %016llx",
                     (unsigned long long)b, (unsigned long long)m->blocks,
                     (unsigned long long)sums[b],
                     (unsigned long long)ec_checksum(file + m->data_off + b * 4096, 4096));
        assert_int_equal(ec_partfile_block_offset(m, b), m->data_off + b * 4096);
    }
    if (m->blocks)
        assert_memory_equal(file + m->block_table_off, sums, m->blocks * 8);
    for (uint64_t i = m->block_table_off + m->blocks * 8; i < m->data_off; i++)
        assert_int_equal(file[i], 0);

    for (uint64_t r = 0; r < m->rows; r++) {
        uint64_t off = ec_partfile_row_offset(m, r), first = 99, bfirst;
        uint32_t n = 99, bn;

        assert_true(off >= m->data_off && off + m->row_bytes <= m->file_size);
        if (m->row_bytes)
            assert_memory_equal(file + off, f->data + r * m->row_bytes, m->row_bytes);
        assert_int_equal(ec_partfile_row_blocks(m, r, &first, &n), 0);
        brute_blocks(m->blocks, off - m->data_off, m->row_bytes, &bfirst, &bn);
        if (first != bfirst || n != bn)
            fail_msg("row %llu (%llu bytes at %llu): blocks %llu+%u, brute force %llu+%u",
                     (unsigned long long)r, (unsigned long long)m->row_bytes,
                     (unsigned long long)off, (unsigned long long)first, n,
                     (unsigned long long)bfirst, bn);
    }
    free(sums);
    free(file);
}

static void check_readback(struct fixture *f)
{
    ec_partfile_meta m;
    uint64_t *sums = calloc(f->meta.partitions + 1, sizeof(uint64_t));
    uint8_t *buf = malloc(f->meta.stride + 1);
    uint8_t *page = malloc(f->meta.stride + 1);
    int fd;

    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    assert_int_equal(m.dtype, f->meta.dtype);
    assert_int_equal(m.ndim, f->meta.ndim);
    assert_memory_equal(m.shape, f->meta.shape, sizeof(m.shape));
    assert_int_equal(m.rows, f->meta.rows);
    assert_int_equal(m.partitions, f->meta.partitions);
    assert_int_equal(m.file_size, f->meta.file_size);
    assert_int_equal(m.header_checksum, f->hsum);
    assert_int_equal(ec_partfile_read_table(fd, &m, sums), 0);
    if (m.partitions)
        assert_memory_equal(sums, f->sums, m.partitions * sizeof(uint64_t));
    for (uint64_t p = 0; p < m.partitions; p++) {
        uint64_t len = ec_partfile_part_length(&m, p);
        uint64_t pad = p + 1 < m.partitions ? m.stride : (len + 4095) / 4096 * 4096;
        assert_int_equal(ec_partfile_read_partition(fd, &m, p, buf, sums[p]), 0);
        assert_memory_equal(buf, f->data + p * m.rows_per_partition * m.row_bytes, len);
        /* padding is zero */
        assert_int_equal(pread(fd, page, pad, (off_t)ec_partfile_part_offset(&m, p)),
                         (ssize_t)pad);
        for (uint64_t i = len; i < pad; i++)
            assert_int_equal(page[i], 0);
    }
    assert_int_equal(ec_partfile_read_partition(fd, &m, m.partitions, buf, 0), EC_EINVAL);
    check_blocks(f, &m, fd);
    close(fd);
    free(sums);
    free(buf);
    free(page);
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->dir = ect_tmpdir("ec-partfile");
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    ect_rmtree(f->dir);
    free(f->dir);
    free(f->data);
    free(f->sums);
    free(f);
    return 0;
}

static void test_roundtrip(void **state)
{
    struct fixture *f = *state;
    const uint64_t shape[] = {1000, 7};

    write_file(f, EC_DTYPE_F32, 2, shape, 12 * KiB); /* 28-byte rows, 1000 % rpp != 0 */
    assert_true(f->meta.partitions > 2);
    assert_int_not_equal(f->meta.rows % f->meta.rows_per_partition, 0);
    assert_int_equal(count_files(f->dir), 1); /* no .tmp left */
    check_readback(f);
}

static void test_roundtrip_shapes(void **state)
{
    struct fixture *f = *state;
    static const struct {
        ec_dtype dtype;
        uint32_t ndim;
        uint64_t shape[3];
        uint64_t target;
    } cases[] = {
        {EC_DTYPE_F64, 0, {0}, 0},               /* scalar */
        {EC_DTYPE_U8, 1, {10000}, 4096},          /* exactly aligned partitions */
        {EC_DTYPE_I8, 1, {10001}, 4096},          /* one extra row */
        {EC_DTYPE_BF16, 3, {33, 5, 7}, 1000},     /* 70-byte rows */
        {EC_DTYPE_I64, 2, {5000, 3}, 0},          /* one partition */
        {EC_DTYPE_F16, 2, {0, 4}, 0},             /* no rows */
        {EC_DTYPE_I32, 2, {9, 0}, 0},             /* rows of no bytes */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(f, cases[i].dtype, cases[i].ndim, cases[i].shape, cases[i].target);
        check_readback(f);
        unlink(f->path);
    }
}

static void test_writer_misuse(void **state)
{
    struct fixture *f = *state;
    ec_partfile_meta m = {.dtype = EC_DTYPE_U8, .ndim = 1, .shape = {100},
                          .rows_per_partition = 64};
    ec_partfile_writer *w = NULL;
    uint8_t buf[128] = {0};
    char name[64];
    uint64_t sums[2];

    assert_int_equal(ec_partfile_layout(&m), 0);
    assert_int_equal(ec_partfile_writer_open(f->dir, &m, &w), 0);
    assert_int_equal(count_files(f->dir), 1);
    assert_int_equal(ec_partfile_writer_append(w, buf, 101), EC_EINVAL);
    assert_int_equal(ec_partfile_writer_append(w, buf, 99), 0);
    assert_int_equal(ec_partfile_writer_commit(w, name, sizeof(name), NULL, sums), EC_EINVAL);
    assert_int_equal(ec_partfile_writer_commit(w, name, 5, NULL, sums), EC_EINVAL);
    ec_partfile_writer_close(w); /* abandons: removes the .tmp */
    assert_int_equal(count_files(f->dir), 0);
    ec_partfile_writer_close(NULL);

    /* meta not from ec_partfile_layout */
    m.partitions = 5;
    assert_int_equal(ec_partfile_writer_open(f->dir, &m, &w), EC_EINVAL);
    assert_int_equal(ec_partfile_layout(&m), 0);
    assert_int_equal(ec_partfile_writer_open("/nonexistent/dir", &m, &w), EC_EIO);
}

/* ------------------------------------------------------------------ */
/* Validation failures                                                 */

static void write_small(struct fixture *f)
{
    const uint64_t shape[] = {1000, 5};
    write_file(f, EC_DTYPE_F32, 2, shape, 4096);
    assert_true(f->meta.partitions >= 3);
}

static void patch(const char *path, uint64_t off, const void *bytes, size_t len)
{
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, bytes, len, (off_t)off), (ssize_t)len);
    close(fd);
}

static void flip(const char *path, uint64_t off)
{
    uint8_t b;
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &b, 1, (off_t)off), 1);
    b ^= 0x40;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)off), 1);
    close(fd);
}

static void expect_open_fails(const char *path, int code, const char *msg)
{
    ec_partfile_meta m;
    int fd = -1;

    assert_int_equal(ec_partfile_open(path, &m, &fd), code);
    assert_int_equal(fd, -1);
    if (msg && !strstr(ec_last_error(), msg))
        fail_msg("expected '%s' in: %s", msg, ec_last_error());
    assert_non_null(strstr(ec_last_error(), path));
}

static void test_bad_magic(void **state)
{
    struct fixture *f = *state;
    write_small(f);
    patch(f->path, 0, "XXXXXXXX", 8);
    expect_open_fails(f->path, EC_ECORRUPT, "magic");
}

static void test_bad_header_byte(void **state)
{
    struct fixture *f = *state;
    write_small(f);
    flip(f->path, 100); /* row_bytes: caught by the header checksum */
    expect_open_fails(f->path, EC_ECORRUPT, "header checksum");
    write_small(f);
    flip(f->path, 3000); /* the zero tail of the header page */
    expect_open_fails(f->path, EC_ECORRUPT, "header checksum");
}

/* A header whose checksum was recomputed but whose arithmetic is wrong. */
static void test_bad_header_arithmetic(void **state)
{
    struct fixture *f = *state;
    uint8_t page[4096];
    uint64_t v, sum;
    int fd;

    write_small(f);
    fd = open(f->path, O_RDWR);
    assert_int_equal(pread(fd, page, 4096, 0), 4096);
    memcpy(&v, page + 88, 8); /* rows */
    v += 1;
    memcpy(page + 88, &v, 8);
    memset(page + 160, 0, 8);
    sum = ec_checksum(page, 4096);
    memcpy(page + 160, &sum, 8);
    assert_int_equal(pwrite(fd, page, 4096, 0), 4096);
    close(fd);
    expect_open_fails(f->path, EC_ECORRUPT, "rows");

    /* version */
    write_small(f);
    fd = open(f->path, O_RDWR);
    assert_int_equal(pread(fd, page, 4096, 0), 4096);
    page[8] = 3;
    assert_int_equal(pwrite(fd, page, 4096, 0), 4096);
    close(fd);
    expect_open_fails(f->path, EC_ECORRUPT, "version");

    /* dtype 99 with a good checksum */
    write_small(f);
    fd = open(f->path, O_RDWR);
    assert_int_equal(pread(fd, page, 4096, 0), 4096);
    page[12] = 99;
    memset(page + 160, 0, 8);
    sum = ec_checksum(page, 4096);
    memcpy(page + 160, &sum, 8);
    assert_int_equal(pwrite(fd, page, 4096, 0), 4096);
    close(fd);
    expect_open_fails(f->path, EC_ECORRUPT, "dtype");
}

static void test_bad_table(void **state)
{
    struct fixture *f = *state;
    write_small(f);
    flip(f->path, 4096 + 32 + 16); /* checksum of partition 1 */
    expect_open_fails(f->path, EC_ECORRUPT, "table checksum");
}

static void test_bad_data(void **state)
{
    struct fixture *f = *state;
    ec_partfile_meta m;
    uint8_t *buf;
    int fd;

    write_small(f);
    flip(f->path, f->meta.data_off + f->meta.stride + 5); /* partition 1 */
    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    buf = malloc(m.stride);
    assert_int_equal(ec_partfile_read_partition(fd, &m, 0, buf, f->sums[0]), 0);
    assert_int_equal(ec_partfile_read_partition(fd, &m, 1, buf, f->sums[1]), EC_ECHECKSUM);
    assert_non_null(strstr(ec_last_error(), "partition 1"));
    assert_non_null(strstr(ec_last_error(), f->path));
    assert_int_equal(ec_partfile_read_partition(fd, &m, 2, buf, f->sums[2]), 0);
    close(fd);
    free(buf);
}

static void test_truncated(void **state)
{
    struct fixture *f = *state;
    ec_partfile_meta m;
    uint8_t *buf;
    int fd;

    write_small(f);
    assert_int_equal(truncate(f->path, (off_t)f->meta.file_size - 4096), 0);
    expect_open_fails(f->path, EC_ECORRUPT, "bytes");

    /* truncated after it was opened: the read says so */
    write_small(f);
    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    assert_int_equal(truncate(f->path, (off_t)(m.data_off + m.stride + 10)), 0);
    buf = malloc(m.stride);
    assert_int_equal(ec_partfile_read_partition(fd, &m, 1, buf, f->sums[1]), EC_EIO);
    assert_non_null(strstr(ec_last_error(), "shorter than its header says"));
    close(fd);
    free(buf);

    /* shorter than a header page */
    write_small(f);
    assert_int_equal(truncate(f->path, 100), 0);
    expect_open_fails(f->path, EC_ECORRUPT, "header");

    /* grown */
    write_small(f);
    assert_int_equal(truncate(f->path, (off_t)f->meta.file_size + 1), 0);
    expect_open_fails(f->path, EC_ECORRUPT, "bytes");

    /* missing */
    expect_open_fails("/nonexistent/x.ecp", EC_EIO, NULL);
}

/* ------------------------------------------------------------------ */
/* Format version 2: block checksums                                   */

/* Shapes that put rows and padding everywhere a block can hold them. */
static void test_v2_blocks(void **state)
{
    struct fixture *f = *state;
    static const struct {
        ec_dtype dtype;
        uint32_t ndim;
        uint64_t shape[3];
        uint64_t target;
    } cases[] = {
        {EC_DTYPE_F32, 2, {3000, 16}, 20 * KiB},  /* 64-byte rows: divide 4096 */
        {EC_DTYPE_F16, 2, {777, 50}, 8 * KiB},    /* 100-byte rows: straddle blocks */
        {EC_DTYPE_F32, 2, {37, 1500}, 20000},     /* 6000-byte rows, > a block */
        {EC_DTYPE_U8, 2, {10, 4096}, 3 * 4096},   /* rows of exactly one block */
        {EC_DTYPE_F64, 2, {1, 1000}, 0},          /* a single row of 2 blocks */
        {EC_DTYPE_U8, 2, {1, 10}, 0},             /* a single small row */
        {EC_DTYPE_I8, 1, {10001}, 4096},          /* 1-byte rows, short last partition */
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_file(f, cases[i].dtype, cases[i].ndim, cases[i].shape, cases[i].target);
        assert_int_equal(f->meta.version, EC_PARTFILE_VERSION);
        assert_true(f->meta.blocks > 0);
        check_readback(f); /* includes check_blocks */
        unlink(f->path);
    }
    /* The shorter last partition of case 1 ends in padding inside a block. */
    write_file(f, cases[1].dtype, cases[1].ndim, cases[1].shape, cases[1].target);
    assert_int_not_equal(f->meta.rows % f->meta.rows_per_partition, 0);
    assert_int_not_equal(f->meta.rows_per_partition * f->meta.row_bytes % 4096, 0);
}

/* row_blocks over many layouts, laid out only, against brute force. */
static void test_row_blocks(void **state)
{
    static const uint64_t row_bytes[] = {1, 3, 12, 100, 4095, 4096, 4097, 6000, 12288};
    static const uint64_t rpps[] = {1, 2, 7, 41, 1000};
    uint64_t first = 7;
    uint32_t n = 7;
    (void)state;

    for (size_t i = 0; i < sizeof(row_bytes) / sizeof(row_bytes[0]); i++) {
        for (size_t j = 0; j < sizeof(rpps) / sizeof(rpps[0]); j++) {
            uint64_t rows = 3 * rpps[j] + 2; /* a short last partition */
            ec_partfile_meta m = {.dtype = EC_DTYPE_U8, .ndim = 2,
                                  .shape = {rows, row_bytes[i]},
                                  .rows_per_partition = rpps[j]};
            uint64_t pos = 0;

            assert_int_equal(ec_partfile_layout(&m), 0);
            if (m.blocks > 4096)
                continue; /* brute force is quadratic */
            /* Walk the data region as the writer fills it. */
            for (uint64_t r = 0; r < rows; r++) {
                uint64_t bfirst;
                uint32_t bn;
                if (r > 0 && r % m.rows_per_partition == 0)
                    pos = PAGE_UP(pos);
                assert_int_equal(ec_partfile_row_offset(&m, r), m.data_off + pos);
                assert_int_equal(ec_partfile_row_blocks(&m, r, &first, &n), 0);
                brute_blocks(m.blocks, pos, m.row_bytes, &bfirst, &bn);
                if (first != bfirst || n != bn)
                    fail_msg("%llu-byte rows, rpp %llu, row %llu: %llu+%u, brute force "
                             "%llu+%u", (unsigned long long)m.row_bytes,
                             (unsigned long long)m.rows_per_partition,
                             (unsigned long long)r, (unsigned long long)first, n,
                             (unsigned long long)bfirst, bn);
                assert_true(first + n <= m.blocks);
                pos += m.row_bytes;
            }
            assert_int_equal(PAGE_UP(pos), m.blocks * 4096);
        }
    }

    /* rows of 0 bytes hold no blocks */
    ec_partfile_meta z = {.dtype = EC_DTYPE_I32, .ndim = 2, .shape = {9, 0},
                          .rows_per_partition = 9};
    assert_int_equal(ec_partfile_layout(&z), 0);
    assert_int_equal(ec_partfile_row_blocks(&z, 8, &first, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(first, 0);

    /* out of range, NULL: outputs untouched */
    ec_partfile_meta m = {.dtype = EC_DTYPE_U8, .ndim = 2, .shape = {10, 5000},
                          .rows_per_partition = 3};
    assert_int_equal(ec_partfile_layout(&m), 0);
    first = 7;
    n = 7;
    assert_int_equal(ec_partfile_row_blocks(&m, 10, &first, &n), EC_ERANGE);
    assert_non_null(strstr(ec_last_error(), "row 10"));
    assert_int_equal(first, 7);
    assert_int_equal(n, 7);
    assert_int_equal(ec_partfile_row_blocks(&m, 0, NULL, &n), EC_EINVAL);
    assert_int_equal(ec_partfile_row_blocks(NULL, 0, &first, &n), EC_EINVAL);
    /* the last row of a partition of 3 rows of 5000 bytes: bytes 10000..14999 */
    assert_int_equal(ec_partfile_row_blocks(&m, 2, &first, &n), 0);
    assert_int_equal(first, 2);
    assert_int_equal(n, 2);
    /* row 3 starts partition 1 at its stride, 16384 bytes in */
    assert_int_equal(ec_partfile_row_blocks(&m, 3, &first, &n), 0);
    assert_int_equal(first, 4);
    assert_int_equal(n, 2);
}

static void put64(uint8_t *p, uint64_t off, uint64_t v)
{
    memcpy(p + off, &v, sizeof(v));
}

static void put32(uint8_t *p, uint64_t off, uint32_t v)
{
    memcpy(p + off, &v, sizeof(v));
}

/* Write <dir>/v1.ecp by hand exactly as the version-1 writer did: header
 * page, partition table padded to 4 KiB, data (no block table). A tensor of
 * rows x cols elements of dtype; fills f->meta (laid out as version 1 and
 * checked against this arithmetic), f->data, f->sums, f->hsum, f->path. */
static void write_v1(struct fixture *f, ec_dtype dtype, uint64_t rows, uint64_t cols,
                     uint64_t rpp)
{
    uint64_t rb = cols * ec_dtype_size(dtype), total = rows * rb;
    uint64_t parts = rows / rpp + (rows % rpp != 0);
    uint64_t stride = PAGE_UP(rpp * rb);
    uint64_t data_off = 4096 + PAGE_UP(parts * 32), size = data_off;
    uint8_t *file;

    if (parts)
        size += (parts - 1) * stride + PAGE_UP(total - (parts - 1) * rpp * rb);
    free(f->data);
    free(f->sums);
    f->data = malloc(total + 1);
    ect_fill(dtype, 7, 0, rows * cols, f->data);
    f->sums = calloc(parts + 1, sizeof(uint64_t));
    file = calloc(1, size);
    assert_non_null(file);
    put64(file, 0, EC_PARTFILE_MAGIC);
    put32(file, 8, 1);
    put32(file, 12, (uint32_t)dtype);
    put32(file, 16, 2);
    put64(file, 24, rows);
    put64(file, 32, cols);
    put64(file, 88, rows);
    put64(file, 96, rb);
    put64(file, 104, rpp);
    put64(file, 112, parts);
    put64(file, 120, stride);
    put64(file, 128, 4096);
    put64(file, 136, data_off);
    put64(file, 144, size);
    for (uint64_t p = 0; p < parts; p++) {
        uint64_t off = data_off + p * stride;
        uint64_t len = (rows - p * rpp < rpp ? rows - p * rpp : rpp) * rb;
        memcpy(file + off, f->data + p * rpp * rb, len);
        f->sums[p] = ec_checksum(file + off, len);
        put64(file, 4096 + p * 32, off);
        put64(file, 4096 + p * 32 + 8, len);
        put64(file, 4096 + p * 32 + 16, f->sums[p]);
    }
    put64(file, 152, ec_checksum(file + 4096, parts * 32));
    f->hsum = ec_checksum(file, 4096); /* the checksum field is still 0 */
    put64(file, 160, f->hsum);
    snprintf(f->path, sizeof(f->path), "%s/v1.ecp", f->dir);
    assert_int_equal(ect_write_file(f->path, file, size), 0);
    free(file);

    memset(&f->meta, 0, sizeof(f->meta));
    f->meta.version = EC_PARTFILE_VERSION_1;
    f->meta.dtype = dtype;
    f->meta.ndim = 2;
    f->meta.shape[0] = rows;
    f->meta.shape[1] = cols;
    f->meta.rows_per_partition = rpp;
    assert_int_equal(ec_partfile_layout(&f->meta), 0);
    assert_int_equal(f->meta.data_off, data_off);
    assert_int_equal(f->meta.file_size, size);
    assert_int_equal(f->meta.blocks, 0);
    f->meta.header_checksum = f->hsum;
}

static void test_v1_still_opens(void **state)
{
    struct fixture *f = *state;
    ec_partfile_meta m;
    uint64_t sums[8], bsums[8] = {0}, first;
    uint32_t n;
    uint8_t *buf;
    int fd;

    write_v1(f, EC_DTYPE_F32, 1000, 5, 300); /* 4 partitions, the last 100 rows */
    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    assert_int_equal(m.version, EC_PARTFILE_VERSION_1);
    assert_int_equal(m.blocks, 0);
    assert_int_equal(m.block_table_off, 0);
    assert_int_equal(m.data_off, 8192);
    assert_int_equal(m.partitions, 4);
    assert_int_equal(m.file_size, f->meta.file_size);
    assert_int_equal(m.header_checksum, f->hsum);
    assert_int_equal(ec_partfile_read_table(fd, &m, sums), 0);
    assert_memory_equal(sums, f->sums, 4 * sizeof(uint64_t));
    buf = malloc(m.stride);
    for (uint64_t p = 0; p < m.partitions; p++) {
        assert_int_equal(ec_partfile_read_partition(fd, &m, p, buf, sums[p]), 0);
        assert_memory_equal(buf, f->data + p * 300 * 20, ec_partfile_part_length(&m, p));
    }
    /* Served by whole partitions: no block checksums to read. */
    assert_int_equal(ec_partfile_read_block_sums(fd, &m, bsums), EC_EVERSION);
    assert_non_null(strstr(ec_last_error(), "version 1"));
    assert_non_null(strstr(ec_last_error(), "embcache upgrade"));
    assert_non_null(strstr(ec_last_error(), "v1.ecp"));
    /* Row arithmetic holds for either version. */
    assert_int_equal(ec_partfile_row_offset(&m, 301), 8192 + 8192 + 20);
    assert_int_equal(ec_partfile_row_blocks(&m, 301, &first, &n), 0);
    assert_int_equal(first, 2);
    assert_int_equal(n, 1);
    free(buf);
    close(fd);
}

/* Rewrite one u64 (or u32) of the header page and fix the header checksum,
 * so that only the field's own validation can catch it. */
static void rewrite_header(const char *path, uint64_t off, uint64_t v, size_t size)
{
    uint8_t page[4096];
    uint64_t sum;
    int fd = open(path, O_RDWR);

    assert_true(fd >= 0);
    assert_int_equal(pread(fd, page, 4096, 0), 4096);
    memcpy(page + off, &v, size);
    memset(page + 160, 0, 8);
    sum = ec_checksum(page, 4096);
    memcpy(page + 160, &sum, 8);
    assert_int_equal(pwrite(fd, page, 4096, 0), 4096);
    close(fd);
}

static void test_bad_block_table(void **state)
{
    struct fixture *f = *state;
    ec_partfile_meta m;
    uint64_t *sums;
    int fd;

    write_small(f);
    assert_int_equal(f->meta.version, 2);
    assert_true(f->meta.blocks >= 3);
    flip(f->path, f->meta.block_table_off + 2 * 8 + 3); /* the sum of block 2 */
    expect_open_fails(f->path, EC_ECORRUPT, "block table checksum");

    write_small(f);
    rewrite_header(f->path, 176, f->meta.blocks + 1, 8);
    expect_open_fails(f->path, EC_ECORRUPT, "blocks is");
    write_small(f);
    rewrite_header(f->path, 176, 0, 8);
    expect_open_fails(f->path, EC_ECORRUPT, "blocks is");
    write_small(f);
    rewrite_header(f->path, 168, f->meta.block_table_off + 4096, 8);
    expect_open_fails(f->path, EC_ECORRUPT, "block_table_off");
    write_small(f);
    rewrite_header(f->path, 136, f->meta.data_off - 4096, 8); /* over the block table */
    expect_open_fails(f->path, EC_ECORRUPT, "data_off");
    write_small(f);
    rewrite_header(f->path, 184, 12345, 8);
    expect_open_fails(f->path, EC_ECORRUPT, "block table checksum");
    /* A version-2 file relabelled version 1: the block fields must be 0. */
    write_small(f);
    rewrite_header(f->path, 8, 1, 4);
    expect_open_fails(f->path, EC_ECORRUPT, "version 1");
    /* A version-1 file with a block count. */
    write_v1(f, EC_DTYPE_F32, 1000, 5, 300);
    rewrite_header(f->path, 176, 4, 8);
    expect_open_fails(f->path, EC_ECORRUPT, "blocks is");
    /* An unknown version with a good header checksum. */
    write_small(f);
    rewrite_header(f->path, 8, 3, 4);
    expect_open_fails(f->path, EC_ECORRUPT, "version 3");
    /* The block table cut short. */
    write_small(f);
    assert_int_equal(truncate(f->path, (off_t)(f->meta.block_table_off + 8)), 0);
    expect_open_fails(f->path, EC_ECORRUPT, "bytes");

    /* Damaged, or replaced, after it was opened: read_block_sums says so. */
    write_small(f);
    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    sums = calloc(m.blocks, sizeof(*sums));
    assert_int_equal(ec_partfile_read_block_sums(fd, &m, sums), 0);
    flip(f->path, m.block_table_off + 1);
    assert_int_equal(ec_partfile_read_block_sums(fd, &m, sums), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "block table checksum"));
    flip(f->path, m.block_table_off + 1);
    assert_int_equal(ec_partfile_read_block_sums(fd, &m, sums), 0);
    rewrite_header(f->path, 3000, 1, 1); /* a valid header, not the one opened */
    assert_int_equal(ec_partfile_read_block_sums(fd, &m, sums), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "changed since it was opened"));
    assert_int_equal(ec_partfile_read_block_sums(fd, &m, NULL), EC_EINVAL);
    assert_int_equal(ec_partfile_read_block_sums(-1, &m, sums), EC_EINVAL);
    close(fd);
    free(sums);
}

/* ------------------------------------------------------------------ */
/* Upgrade                                                             */

static void test_upgrade(void **state)
{
    struct fixture *f = *state;
    char name[64], name2[64], src_path[512], v2_path[512];
    uint64_t hsum = 0, hsum2 = 0, *sums, *tsums;
    ec_partfile_meta m;
    size_t src_len, len, len2;
    uint8_t *src, *v2, *v2b, *buf;
    int fd;

    /* 100-byte rows, 81 per partition: rows straddle blocks, padding at the
     * end of every partition and a short last one. */
    write_v1(f, EC_DTYPE_BF16, 777, 50, 81);
    snprintf(src_path, sizeof(src_path), "%s", f->path);
    src = ect_read_file(src_path, &src_len);
    sums = calloc(f->meta.partitions, sizeof(*sums));
    tsums = calloc(f->meta.partitions, sizeof(*tsums));
    assert_int_equal(ec_partfile_upgrade(src_path, f->dir, NULL, NULL, name, sizeof(name),
                                         &hsum, sums),
                     0);
    assert_int_equal(count_files(f->dir), 2); /* the source and the new file */
    {
        size_t l;
        uint8_t *again = ect_read_file(src_path, &l); /* the source is untouched */
        assert_int_equal(l, src_len);
        assert_memory_equal(again, src, l);
        free(again);
    }
    assert_memory_equal(sums, f->sums, f->meta.partitions * sizeof(uint64_t));

    snprintf(v2_path, sizeof(v2_path), "%s/%s", f->dir, name);
    assert_int_equal(ec_partfile_open(v2_path, &m, &fd), 0);
    assert_int_equal(m.version, EC_PARTFILE_VERSION);
    assert_int_equal(m.dtype, f->meta.dtype);
    assert_int_equal(m.ndim, f->meta.ndim);
    assert_memory_equal(m.shape, f->meta.shape, sizeof(m.shape));
    assert_int_equal(m.rows_per_partition, 81);
    assert_int_equal(m.rows, f->meta.rows);
    assert_int_equal(m.partitions, f->meta.partitions);
    assert_int_equal(m.stride, f->meta.stride);
    assert_int_equal(m.header_checksum, hsum);
    assert_int_equal(ec_partfile_read_table(fd, &m, tsums), 0);
    assert_memory_equal(tsums, f->sums, m.partitions * sizeof(uint64_t));
    buf = malloc(m.stride);
    for (uint64_t p = 0; p < m.partitions; p++) {
        assert_int_equal(ec_partfile_read_partition(fd, &m, p, buf, tsums[p]), 0);
        assert_memory_equal(buf, f->data + p * 81 * 100, ec_partfile_part_length(&m, p));
    }
    free(buf);
    close(fd);
    /* Its blocks, rows and padding, as for any version-2 file. */
    snprintf(f->path, sizeof(f->path), "%s", v2_path);
    f->meta = m;
    f->hsum = hsum;
    check_readback(f);

    /* Upgrading a version-2 file gives the same bytes again. */
    assert_int_equal(ec_partfile_upgrade(v2_path, f->dir, NULL, NULL, name2, sizeof(name2),
                                         &hsum2, NULL),
                     0);
    assert_int_equal(hsum2, hsum);
    snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, name2);
    v2 = ect_read_file(v2_path, &len);
    v2b = ect_read_file(f->path, &len2);
    assert_int_equal(len, len2);
    assert_memory_equal(v2, v2b, len);
    free(v2);
    free(v2b);
    free(src);
    free(sums);
    free(tsums);
}

static void test_upgrade_refuses_damage(void **state)
{
    struct fixture *f = *state;
    char name[64] = "";
    uint64_t hsum = 42, sums[4] = {0};

    write_v1(f, EC_DTYPE_F32, 1000, 5, 300);
    flip(f->path, f->meta.data_off + 2 * f->meta.stride + 17); /* partition 2 */
    assert_int_equal(ec_partfile_upgrade(f->path, f->dir, NULL, NULL, name, sizeof(name), &hsum,
                                         sums),
                     EC_ECHECKSUM);
    if (!strstr(ec_last_error(), "partition 2") || !strstr(ec_last_error(), f->path) ||
        !strstr(ec_last_error(), "nothing was written"))
        fail_msg("unexpected message: %s", ec_last_error());
    assert_int_equal(count_files(f->dir), 1); /* no new file, no .tmp */
    assert_string_equal(name, "");
    assert_int_equal(hsum, 42);

    /* A damaged header: refused before anything is created. */
    write_v1(f, EC_DTYPE_F32, 1000, 5, 300);
    flip(f->path, 100);
    assert_int_equal(ec_partfile_upgrade(f->path, f->dir, NULL, NULL, name, sizeof(name), NULL,
                                         NULL),
                     EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "cannot upgrade"));
    assert_int_equal(count_files(f->dir), 1);

    write_v1(f, EC_DTYPE_F32, 1000, 5, 300);
    assert_int_equal(ec_partfile_upgrade("/nonexistent/x.ecp", f->dir, NULL, NULL, name,
                                         sizeof(name), NULL, NULL),
                     EC_EIO);
    assert_int_equal(ec_partfile_upgrade(f->path, "/nonexistent/dir", NULL, NULL, name,
                                         sizeof(name), NULL, NULL),
                     EC_EIO);
    assert_int_equal(ec_partfile_upgrade(f->path, f->dir, NULL, NULL, NULL, 0, NULL, NULL),
                     EC_EINVAL);
    assert_int_equal(count_files(f->dir), 1);
}

/* ------------------------------------------------------------------ */
/* The origin record                                                   */

#define REC_LEN (EC_PARTFILE_ALIGN - EC_PARTFILE_ORIGIN_OFF)

static ec_partfile_origin sample_origin(void)
{
    ec_partfile_origin o;

    memset(&o, 0, sizeof(o));
    snprintf(o.model, sizeof(o.model), "bert-base");
    snprintf(o.tensor, sizeof(o.tensor), "encoder/layer.0:w");
    o.version = 12;
    o.round = 7;
    o.created_unix = 1767225600;
    o.version_tensors = 3;
    return o;
}

static void read_origin_of(const char *path, ec_partfile_origin *o)
{
    ec_partfile_meta m;
    int fd;

    assert_int_equal(ec_partfile_open(path, &m, &fd), 0);
    if (ec_partfile_read_origin(fd, &m, o))
        fail_msg("read_origin %s: %s", path, ec_last_error());
    close(fd);
}

static void same_origin(const ec_partfile_origin *a, const ec_partfile_origin *b)
{
    assert_true(a->present); /* a: read back; b: what was written */
    assert_string_equal(a->model, b->model);
    assert_string_equal(a->tensor, b->tensor);
    assert_int_equal(a->version, b->version);
    assert_int_equal(a->round, b->round);
    assert_int_equal(a->created_unix, b->created_unix);
    assert_int_equal(a->version_tensors, b->version_tensors);
}

/* Written, read back; the page holds it at 256 and zeros elsewhere; every
 * other reader takes the file as before; the header checksum covers it. */
static void test_origin_roundtrip(void **state)
{
    struct fixture *f = *state;
    const uint64_t shape[] = {1000, 7};
    const char *params = "{\"lr\":0.0001,\"layers\":[1,2,3]}";
    ec_partfile_origin o = sample_origin(), back;
    uint64_t *sums;
    ec_partfile_meta m;
    uint8_t *file;
    size_t len;
    bool lost = true;
    int fd;

    write_file_origin(f, EC_DTYPE_F32, 2, shape, 12 * KiB, &o, params, &lost);
    assert_false(lost);
    read_origin_of(f->path, &back);
    same_origin(&back, &o);
    assert_false(back.params_lost);
    assert_string_equal(back.params_json, params);
    assert_int_equal(back.params_full_len, strlen(params));

    file = ect_read_file(f->path, &len);
    assert_non_null(file);
    for (size_t i = 192; i < EC_PARTFILE_ORIGIN_OFF; i++)
        assert_int_equal(file[i], 0);
    assert_memory_equal(file + EC_PARTFILE_ORIGIN_OFF, "ECORIG01", 8);
    {
        size_t end = EC_PARTFILE_ORIGIN_OFF + EC_PARTFILE_ORIGIN_FIXED + strlen(o.model) +
                     strlen(o.tensor) + strlen(params);
        uint32_t total;
        memcpy(&total, file + EC_PARTFILE_ORIGIN_OFF + 8, 4);
        assert_int_equal(EC_PARTFILE_ORIGIN_OFF + total, end);
        for (size_t i = end; i < EC_PARTFILE_ALIGN; i++)
            assert_int_equal(file[i], 0);
    }
    free(file);

    /* The readers of the data do not mind it: the same checks as any file. */
    check_readback(f);
    /* The whole-file check passes and gives the table's checksums. */
    sums = calloc(f->meta.partitions, sizeof(*sums));
    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    assert_int_equal(ec_partfile_verify(fd, &m, sums), 0);
    assert_memory_equal(sums, f->sums, m.partitions * sizeof(*sums));
    close(fd);
    free(sums);

    /* One byte of the record changed: the header checksum fails. */
    flip(f->path, EC_PARTFILE_ORIGIN_OFF + EC_PARTFILE_ORIGIN_FIXED + 2);
    expect_open_fails(f->path, EC_ECORRUPT, "header checksum");
}

/* A file written without one (as before this format had it): all zero
 * after the header struct, read back as absent. */
static void test_origin_absent(void **state)
{
    struct fixture *f = *state;
    ec_partfile_origin o;
    uint8_t *file;
    size_t len;

    write_small(f);
    read_origin_of(f->path, &o);
    assert_false(o.present);
    file = ect_read_file(f->path, &len);
    for (size_t i = 192; i < EC_PARTFILE_ALIGN; i++)
        assert_int_equal(file[i], 0);
    free(file);
    /* version-1 files have none either */
    write_v1(f, EC_DTYPE_F32, 100, 3, 16);
    read_origin_of(f->path, &o);
    assert_false(o.present);
}

/* Params that do not fit are left out, never cut, and the record says so. */
static void test_origin_params_lost(void **state)
{
    struct fixture *f = *state;
    const uint64_t shape[] = {10, 2};
    ec_partfile_origin o = sample_origin(), back;
    size_t fit = EC_PARTFILE_ORIGIN_PARAMS_MIN;
    char *params = malloc(fit + 2);
    unsigned char rec[REC_LEN];
    bool lost = false;

    /* The longest names leave EC_PARTFILE_ORIGIN_PARAMS_MIN bytes: exactly
     * that many fit, one more does not. */
    memset(o.model, 'm', EC_NAME_MAX);
    o.model[EC_NAME_MAX] = '\0';
    memset(o.tensor, 't', EC_NAME_MAX);
    o.tensor[EC_NAME_MAX] = '\0';
    memset(params, 'x', fit);
    params[0] = '{';
    params[fit - 1] = '}';
    params[fit] = '\0';
    assert_int_equal(ec_partfile_origin_encode(&o, params, rec, sizeof(rec), &lost), 0);
    assert_false(lost);
    assert_int_equal(ec_partfile_origin_decode(rec, sizeof(rec), &back), 0);
    assert_false(back.params_lost);
    assert_int_equal(strlen(back.params_json), fit);

    params[fit] = ' ';
    params[fit + 1] = '\0';
    write_file_origin(f, EC_DTYPE_U8, 2, shape, 0, &o, params, &lost);
    assert_true(lost);
    read_origin_of(f->path, &back);
    same_origin(&back, &o);
    assert_true(back.params_lost);
    assert_string_equal(back.params_json, "");
    assert_int_equal(back.params_full_len, fit + 1);
    free(params);

    /* No params at all: none stored, none lost. */
    assert_int_equal(ec_partfile_origin_encode(&o, NULL, rec, sizeof(rec), &lost), 0);
    assert_false(lost);
    assert_int_equal(ec_partfile_origin_decode(rec, sizeof(rec), &back), 0);
    assert_false(back.params_lost);
    assert_int_equal(back.params_full_len, 0);
}

/* Every field of a record is checked before it is believed. */
static void test_origin_decode_rejects(void **state)
{
    ec_partfile_origin o = sample_origin(), back;
    unsigned char good[REC_LEN], bad[REC_LEN];
    const size_t ml = strlen(o.model), tl = strlen(o.tensor);
    static const struct {
        size_t off;
        uint64_t v;
        int width;
        const char *what;
    } cases[] = {
        {0, 0x4141414141414141ull, 8, "magic"},
        {8, 999, 4, "length"},
        {12, 2, 4, "flags"},
        {12, EC_PARTFILE_ORIGIN_PARAMS_LOST, 4, "params"}, /* lost, but params stored */
        {16, 0, 8, "version"},
        {24, (uint64_t)-2, 8, "round"},
        {40, 0, 4, "tensors"},
        {44, 0, 2, "name lengths"},
        {46, EC_NAME_MAX + 1, 2, "name lengths"},
        {48, 5000, 4, "do not fit"},
        {52, 99, 4, "params"},
        {EC_PARTFILE_ORIGIN_FIXED + 1, 0, 1, "NUL"},
        {REC_LEN - 1, 1, 1, "not zero"},
    };
    (void)state;

    assert_int_equal(ec_partfile_origin_encode(&o, "{}", good, sizeof(good), NULL), 0);
    assert_int_equal(ec_partfile_origin_decode(good, sizeof(good), &back), 0);
    same_origin(&back, &o);
    assert_int_equal(ml + tl + 2 + EC_PARTFILE_ORIGIN_FIXED,
                     (size_t)(good[8] | good[9] << 8));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        memcpy(bad, good, sizeof(bad));
        for (int k = 0; k < cases[i].width; k++)
            bad[cases[i].off + (size_t)k] = (unsigned char)(cases[i].v >> (8 * k));
        memset(&back, 0x55, sizeof(back));
        if (ec_partfile_origin_decode(bad, sizeof(bad), &back) != EC_ECORRUPT)
            fail_msg("a record with %s broken at byte %zu was accepted", cases[i].what,
                     cases[i].off);
        if (!strstr(ec_last_error(), cases[i].what))
            fail_msg("expected '%s' in: %s", cases[i].what, ec_last_error());
        assert_int_equal(back.version, (int64_t)0x5555555555555555ll); /* untouched */
    }
    /* All zero is a file without one, not an error. */
    memset(bad, 0, sizeof(bad));
    assert_int_equal(ec_partfile_origin_decode(bad, sizeof(bad), &back), 0);
    assert_false(back.present);
    /* The encoder refuses what the decoder would. */
    o.version = 0;
    assert_int_equal(ec_partfile_origin_encode(&o, NULL, bad, sizeof(bad), NULL), EC_EINVAL);
    o = sample_origin();
    o.model[0] = '\0';
    assert_int_equal(ec_partfile_origin_encode(&o, NULL, bad, sizeof(bad), NULL), EC_EINVAL);
    o = sample_origin();
    o.round = -2;
    assert_int_equal(ec_partfile_origin_encode(&o, NULL, bad, sizeof(bad), NULL), EC_EINVAL);
    o = sample_origin();
    o.version_tensors = 0;
    assert_int_equal(ec_partfile_origin_encode(&o, NULL, bad, sizeof(bad), NULL), EC_EINVAL);
    o = sample_origin();
    assert_int_equal(ec_partfile_origin_encode(&o, NULL, bad, sizeof(bad) - 1, NULL),
                     EC_EINVAL);
    assert_int_equal(ec_partfile_origin_decode(bad, sizeof(bad) - 1, &back), EC_EINVAL);
}

/* An upgrade keeps the source's origin byte for byte, puts the one it is
 * given in its place, and fills one into a version-1 file. */
static void test_upgrade_origin(void **state)
{
    struct fixture *f = *state;
    const uint64_t shape[] = {300, 5};
    ec_partfile_origin o = sample_origin(), other = sample_origin(), back;
    char name[64], path[600], *params = malloc(EC_PARTFILE_ORIGIN_ROOM + 10);
    uint8_t *a, *b;
    size_t la, lb;
    bool lost = false;

    /* Params that did not fit: the record (flag and all) is carried over. */
    memset(params, 'p', EC_PARTFILE_ORIGIN_ROOM + 5);
    params[EC_PARTFILE_ORIGIN_ROOM + 5] = '\0';
    write_file_origin(f, EC_DTYPE_I32, 2, shape, 4096, &o, params, &lost);
    assert_true(lost);
    assert_int_equal(ec_partfile_upgrade(f->path, f->dir, NULL, NULL, name, sizeof(name), NULL,
                                         NULL),
                     0);
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    a = ect_read_file(f->path, &la);
    b = ect_read_file(path, &lb);
    assert_memory_equal(a + EC_PARTFILE_ORIGIN_OFF, b + EC_PARTFILE_ORIGIN_OFF, REC_LEN);
    free(a);
    free(b);
    read_origin_of(path, &back);
    same_origin(&back, &o);
    assert_true(back.params_lost);
    unlink(path);

    /* The caller's origin instead. */
    snprintf(other.tensor, sizeof(other.tensor), "renamed");
    other.version = 99;
    assert_int_equal(ec_partfile_upgrade(f->path, f->dir, &other, "{\"a\":1}", name,
                                         sizeof(name), NULL, NULL),
                     0);
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    read_origin_of(path, &back);
    same_origin(&back, &other);
    assert_string_equal(back.params_json, "{\"a\":1}");
    unlink(path);
    unlink(f->path);

    /* A version-1 file: none kept (it has none), one filled when given. */
    write_v1(f, EC_DTYPE_F32, 200, 4, 32);
    assert_int_equal(ec_partfile_upgrade(f->path, f->dir, NULL, NULL, name, sizeof(name), NULL,
                                         NULL),
                     0);
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    read_origin_of(path, &back);
    assert_false(back.present);
    unlink(path);
    assert_int_equal(ec_partfile_upgrade(f->path, f->dir, &o, NULL, name, sizeof(name), NULL,
                                         NULL),
                     0);
    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    read_origin_of(path, &back);
    same_origin(&back, &o);
    assert_int_equal(back.params_full_len, 0);
    /* and the rest of it is the upgraded file, whole */
    {
        ec_partfile_meta m;
        int fd;
        assert_int_equal(ec_partfile_open(path, &m, &fd), 0);
        assert_int_equal(m.version, EC_PARTFILE_VERSION);
        assert_int_equal(ec_partfile_verify(fd, &m, NULL), 0);
        close(fd);
    }
    free(params);
}

/* ec_partfile_verify reads everything: a flipped data byte, a flipped byte
 * of zero padding (version 2: its block checksum) and a damaged table are
 * each found; a version-1 file is checked by partitions. */
static void test_verify(void **state)
{
    struct fixture *f = *state;
    ec_partfile_meta m;
    uint64_t off, len;
    int fd;

    write_small(f);
    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), 0);
    assert_int_equal(ec_partfile_verify(-1, &m, NULL), EC_EINVAL);
    /* the last byte of partition 1's data */
    off = ec_partfile_part_offset(&m, 1) + ec_partfile_part_length(&m, 1) - 1;
    flip(f->path, off);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), EC_ECHECKSUM);
    assert_non_null(strstr(ec_last_error(), "partition 1"));
    flip(f->path, off);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), 0);
    /* the zero padding after the last partition: only a block checksum
     * covers it */
    len = ec_partfile_part_length(&m, m.partitions - 1);
    assert_true(len % 4096 != 0);
    off = ec_partfile_part_offset(&m, m.partitions - 1) + len;
    flip(f->path, off);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), EC_ECHECKSUM);
    assert_non_null(strstr(ec_last_error(), "block"));
    flip(f->path, off);
    /* the partition table */
    flip(f->path, 4096 + 16);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), EC_ECORRUPT);
    flip(f->path, 4096 + 16);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), 0);
    close(fd);

    write_v1(f, EC_DTYPE_I64, 500, 3, 40);
    assert_int_equal(ec_partfile_open(f->path, &m, &fd), 0);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), 0);
    flip(f->path, m.data_off + 5);
    assert_int_equal(ec_partfile_verify(fd, &m, NULL), EC_ECHECKSUM);
    assert_non_null(strstr(ec_last_error(), "partition 0"));
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plan_default_target),
        cmocka_unit_test(test_plan_alignment),
        cmocka_unit_test(test_plan_limits),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_checksum),
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_shapes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_writer_misuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_magic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_header_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_header_arithmetic, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_data, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_v2_blocks, setup, teardown),
        cmocka_unit_test(test_row_blocks),
        cmocka_unit_test_setup_teardown(test_v1_still_opens, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_block_table, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_refuses_damage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_origin_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_origin_absent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_origin_params_lost, setup, teardown),
        cmocka_unit_test(test_origin_decode_rejects),
        cmocka_unit_test_setup_teardown(test_upgrade_origin, setup, teardown),
        cmocka_unit_test_setup_teardown(test_verify, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
