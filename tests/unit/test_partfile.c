/*
 * test_partfile.c - unit tests of the partition file format (core/partfile.c):
 * planning, layout arithmetic, a byte-exact write/open/read round trip, and
 * every validation failure of the reader (header, table, data, size).
 * Single-threaded; works in a temporary directory.
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
    assert_int_equal(m.rows, 10);
    assert_int_equal(m.row_bytes, 12);
    assert_int_equal(m.partitions, 3);
    assert_int_equal(m.stride, 4096);
    assert_int_equal(m.data_off, 8192);
    assert_int_equal(m.file_size, 8192 + 3 * 4096);
    assert_int_equal(ec_partfile_part_offset(&m, 2), 8192 + 2 * 4096);
    assert_int_equal(ec_partfile_part_length(&m, 0), 48);
    assert_int_equal(ec_partfile_part_length(&m, 2), 24); /* 2 rows */

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
    assert_int_equal(b.file_size, 8192 + 3 * 8192 + 4096);

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

/* Write a tensor of the given dtype/shape with odd-sized appends. */
static void write_file(struct fixture *f, ec_dtype dtype, uint32_t ndim,
                       const uint64_t *shape, uint64_t target)
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
    page[8] = 2;
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
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
