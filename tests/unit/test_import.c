/*
 * test_import.c - unit tests of the importer (core/import.c) against a real
 * catalog in a temporary data directory: .npy and .safetensors files of
 * several dtypes are imported, every partition is read back through the
 * catalog's tensor record and compared byte for byte with the source;
 * failures (duplicate version, malformed file, unknown extension,
 * duplicate names) leave nothing registered and no file behind; the
 * start-up sweep removes orphans and keeps referenced files.
 * Single-threaded.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "core/catalog.h"
#include "core/import.h"
#include "core/partfile.h"
#include "tests/testutil.h"

struct fx {
    char *dir;
    char parts[512];
    ec_catalog *cat;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    char db[600];

    f->dir = ect_tmpdir("ec-import");
    snprintf(f->parts, sizeof(f->parts), "%s/%s", f->dir, EC_PARTS_DIR);
    snprintf(db, sizeof(db), "%s/%s", f->dir, EC_CATALOG_FILE);
    if (ec_catalog_open(db, &f->cat) != 0)
        fail_msg("catalog open: %s", ec_last_error());
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    ec_catalog_close(f->cat);
    ect_rmtree(f->dir);
    free(f->dir);
    free(f);
    return 0;
}

/* Files in parts/ (-1 if it does not exist). */
static int count_parts(const struct fx *f)
{
    DIR *d = opendir(f->parts);
    struct dirent *de;
    int n = 0;

    if (!d)
        return -1;
    while ((de = readdir(d)))
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static int open_src(const struct fx *f, const char *name)
{
    char path[600];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", f->dir, name);
    fd = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(fd >= 0);
    return fd;
}

/* Read every partition of (model, version, tensor) through the catalog's
 * record and compare with `expect` (rows * row_bytes bytes). */
static void check_tensor(const struct fx *f, const char *model, const char *version,
                         const char *tensor, ec_dtype dtype, uint32_t ndim,
                         const uint64_t *shape, const void *expect)
{
    ec_cat_tensor t = {0};
    ec_partfile_meta m;
    char path[800];
    uint8_t *buf;
    int fd;

    if (ec_catalog_resolve(f->cat, model, version, tensor, &t) != 0)
        fail_msg("resolve %s: %s", tensor, ec_last_error());
    assert_int_equal(t.dtype, dtype);
    assert_int_equal(t.ndim, ndim);
    for (uint32_t i = 0; i < ndim; i++)
        assert_int_equal(t.shape[i], shape[i]);
    assert_int_equal(strncmp(t.path, "parts/", 6), 0);
    snprintf(path, sizeof(path), "%s/%s", f->dir, t.path);
    if (ec_partfile_open(path, &m, &fd) != 0)
        fail_msg("open %s: %s", path, ec_last_error());
    assert_int_equal(m.header_checksum, t.header_checksum);
    assert_int_equal(m.file_size, t.file_size);
    assert_int_equal(m.partitions, t.partitions);
    assert_int_equal(m.rows_per_partition, t.rows_per_partition);
    assert_int_equal(m.row_bytes, t.row_bytes);
    buf = malloc(m.stride + 1);
    for (uint64_t p = 0; p < m.partitions; p++) {
        uint64_t len = ec_partfile_part_length(&m, p);
        if (ec_partfile_read_partition(fd, &m, p, buf, t.part_checksums[p]) != 0)
            fail_msg("read %s partition %llu: %s", tensor, (unsigned long long)p,
                     ec_last_error());
        assert_memory_equal(buf, (const uint8_t *)expect + p * m.rows_per_partition * m.row_bytes,
                            len);
    }
    free(buf);
    close(fd);
    ec_cat_tensor_clear(&t);
}

static void *filled(ec_dtype dtype, uint32_t ndim, const uint64_t *shape, uint64_t seed)
{
    uint64_t n = 1;
    void *buf;

    for (uint32_t i = 0; i < ndim; i++)
        n *= shape[i];
    buf = malloc(n * ec_dtype_size(dtype) + 1);
    ect_fill(dtype, seed, 0, n, buf);
    return buf;
}

static const uint64_t npy_shape[] = {1000, 5}; /* 20-byte rows; 1000 % rpp != 0 */

static const ect_st_tensor st_tensors[] = {
    {"enc/w", EC_DTYPE_F16, 2, {777, 9}, 11},
    {"enc/b", EC_DTYPE_BF16, 1, {300}, 12},
    {"ids", EC_DTYPE_I64, 2, {130, 3}, 13},
    {"q8", EC_DTYPE_I8, 3, {50, 4, 21}, 14},
    {"scale", EC_DTYPE_F64, 0, {0}, 15},
    {"u", EC_DTYPE_U8, 1, {4097}, 16},
    {"i32", EC_DTYPE_I32, 2, {64, 16}, 17},
};
#define N_ST (sizeof(st_tensors) / sizeof(st_tensors[0]))

static void write_inputs(const struct fx *f)
{
    char path[600];

    snprintf(path, sizeof(path), "%s/word_emb.npy", f->dir);
    assert_int_equal(ect_write_npy(path, EC_DTYPE_F32, 2, npy_shape, 7), 0);
    snprintf(path, sizeof(path), "%s/model.safetensors", f->dir);
    assert_int_equal(ect_write_safetensors(path, st_tensors, N_ST), 0);
}

static void test_import_roundtrip(void **state)
{
    struct fx *f = *state;
    ec_import_opts o = {.model = "bert", .version = 1, .round = 3,
                        .params_json = "{\"lr\": 0.1}", .partition_bytes = 4096};
    ec_import_file files[2];
    uint32_t n = 0;
    void *exp;

    write_inputs(f);
    files[0] = (ec_import_file){open_src(f, "word_emb.npy"), "some/dir/word_emb.npy"};
    files[1] = (ec_import_file){open_src(f, "model.safetensors"), "model.safetensors"};
    if (ec_import_files(f->cat, f->dir, &o, files, 2, &n) != 0)
        fail_msg("import: %s", ec_last_error());
    assert_int_equal(n, 1 + N_ST);
    assert_int_equal(count_parts(f), 1 + N_ST);

    exp = filled(EC_DTYPE_F32, 2, npy_shape, 7);
    check_tensor(f, "bert", "1", "word_emb", EC_DTYPE_F32, 2, npy_shape, exp);
    free(exp);
    for (size_t i = 0; i < N_ST; i++) {
        exp = filled(st_tensors[i].dtype, st_tensors[i].ndim, st_tensors[i].shape,
                     st_tensors[i].seed);
        check_tensor(f, "bert", "1", st_tensors[i].name, st_tensors[i].dtype,
                     st_tensors[i].ndim, st_tensors[i].shape, exp);
        free(exp);
    }
    /* several partitions, the last one short */
    {
        ec_cat_tensor t = {0};
        assert_int_equal(ec_catalog_resolve(f->cat, "bert", "1", "word_emb", &t), 0);
        assert_true(t.partitions > 1);
        assert_int_not_equal(t.rows % t.rows_per_partition, 0);
        ec_cat_tensor_clear(&t);
    }

    /* the same version again: EC_EEXIST, no new files */
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, files, 2, &n), EC_EEXIST);
    assert_non_null(strstr(ec_last_error(), "bert"));
    assert_int_equal(count_parts(f), 1 + N_ST);

    /* a second version with the default partition size */
    o.version = 2;
    o.partition_bytes = 0;
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, files, 1, &n), 0);
    assert_int_equal(n, 1);
    exp = filled(EC_DTYPE_F32, 2, npy_shape, 7);
    check_tensor(f, "bert", "2", "word_emb", EC_DTYPE_F32, 2, npy_shape, exp);
    free(exp);
    close(files[0].fd);
    close(files[1].fd);
}

/* The catalog refuses the version after the files were written: all of
 * them are removed again. */
static void test_catalog_refusal_cleans_up(void **state)
{
    struct fx *f = *state;
    ec_import_opts o = {.model = "m", .version = 1, .round = -1, .params_json = "[1]"};
    ec_import_file file;
    uint32_t n = 99;

    write_inputs(f);
    file = (ec_import_file){open_src(f, "model.safetensors"), "model.safetensors"};
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, &file, 1, &n), EC_EINVAL);
    assert_int_equal(n, 99);
    assert_int_equal(count_parts(f), 0);
    close(file.fd);
}

static void test_big_endian_npy(void **state)
{
    struct fx *f = *state;
    const char *dict = "{'descr': '>i4', 'fortran_order': False, 'shape': (3, 2), }";
    uint8_t img[128 + 24];
    int32_t vals[6] = {1, -2, 0x01020304, -0x7f000000, 5, 6};
    ec_import_opts o = {.model = "be", .version = 1, .round = -1};
    ec_import_file file;
    const uint64_t shape[] = {3, 2};
    char path[600];
    size_t hl = 128 - 10;

    memset(img, ' ', 128);
    memcpy(img, "\x93NUMPY\x01\x00", 8);
    img[8] = (uint8_t)hl;
    img[9] = 0;
    memcpy(img + 10, dict, strlen(dict));
    img[127] = '\n';
    for (int i = 0; i < 6; i++) {
        uint32_t u = (uint32_t)vals[i];
        img[128 + 4 * i] = (uint8_t)(u >> 24);
        img[129 + 4 * i] = (uint8_t)(u >> 16);
        img[130 + 4 * i] = (uint8_t)(u >> 8);
        img[131 + 4 * i] = (uint8_t)u;
    }
    snprintf(path, sizeof(path), "%s/be.npy", f->dir);
    assert_int_equal(ect_write_file(path, img, sizeof(img)), 0);
    file = (ec_import_file){open_src(f, "be.npy"), "be.npy"};
    if (ec_import_files(f->cat, f->dir, &o, &file, 1, NULL) != 0)
        fail_msg("import: %s", ec_last_error());
    check_tensor(f, "be", "1", "be", EC_DTYPE_I32, 2, shape, vals);
    close(file.fd);
}

static void test_malformed_second_file(void **state)
{
    struct fx *f = *state;
    ec_import_opts o = {.model = "m", .version = 1, .round = -1, .partition_bytes = 4096};
    ec_import_file files[3];
    char path[600];
    size_t len;
    uint8_t *img;
    ec_cat_tensor t = {0};

    write_inputs(f);
    /* a .npy with its data cut short */
    snprintf(path, sizeof(path), "%s/word_emb.npy", f->dir);
    img = ect_read_file(path, &len);
    snprintf(path, sizeof(path), "%s/broken.npy", f->dir);
    assert_int_equal(ect_write_file(path, img, len - 3), 0);
    free(img);

    files[0] = (ec_import_file){open_src(f, "model.safetensors"), "model.safetensors"};
    files[1] = (ec_import_file){open_src(f, "broken.npy"), "broken.npy"};
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, files, 2, NULL), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "import of model 'm' version 1 failed: broken.npy"));
    assert_non_null(strstr(ec_last_error(), "truncated"));
    assert_int_equal(ec_catalog_resolve(f->cat, "m", "1", "ids", &t), EC_ENOENT);
    assert_true(count_parts(f) <= 0);

    /* unknown extension */
    files[1].name = "weights.pt";
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, files, 2, NULL), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "weights.pt"));
    assert_true(count_parts(f) <= 0);

    /* the same tensor name twice across files: input that cannot be
     * imported as given, EC_EFORMAT naming both files */
    close(files[1].fd);
    files[1] = (ec_import_file){open_src(f, "word_emb.npy"), "ids.npy"};
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, files, 2, NULL), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "'ids'"));
    assert_non_null(strstr(ec_last_error(), "model.safetensors"));
    assert_non_null(strstr(ec_last_error(), "ids.npy"));
    assert_true(count_parts(f) <= 0);

    /* an invalid tensor name (from the file's name): the file's fault */
    files[1].name = "bad name.npy";
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, files, 2, NULL), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "bad name.npy"));
    assert_true(count_parts(f) <= 0);

    /* the import still works once the input is fixed */
    files[1].name = "word_emb.npy";
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, files, 2, NULL), 0);
    assert_int_equal(count_parts(f), 1 + N_ST);
    close(files[0].fd);
    close(files[1].fd);
}

static void test_bad_args(void **state)
{
    struct fx *f = *state;
    ec_import_opts o = {.model = "m", .version = 1, .round = -1};
    ec_import_file file = {0, "x.npy"};
    ec_import_file many[EC_IMPORT_MAX_FILES + 1];

    assert_int_equal(ec_import_files(f->cat, f->dir, &o, &file, 0, NULL), EC_EINVAL);
    for (int i = 0; i <= EC_IMPORT_MAX_FILES; i++)
        many[i] = file;
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, many, EC_IMPORT_MAX_FILES + 1, NULL),
                     EC_EINVAL);
    o.version = 0;
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, &file, 1, NULL), EC_EINVAL);
    o.version = 1;
    o.model = "bad model";
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, &file, 1, NULL), EC_EINVAL);
    o.model = NULL;
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, &file, 1, NULL), EC_EINVAL);
    o.model = "m";
    file.fd = -1;
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, &file, 1, NULL), EC_EINVAL);
    assert_int_equal(ec_import_files(NULL, f->dir, &o, &file, 1, NULL), EC_EINVAL);
    assert_int_equal(count_parts(f), -1);
}

static void test_sweep(void **state)
{
    struct fx *f = *state;
    ec_import_opts o = {.model = "m", .version = 1, .round = -1};
    ec_import_file file;
    char path[700];

    /* nothing to sweep yet */
    assert_int_equal(ec_import_sweep(f->cat, f->dir), 0);

    write_inputs(f);
    file = (ec_import_file){open_src(f, "model.safetensors"), "model.safetensors"};
    assert_int_equal(ec_import_files(f->cat, f->dir, &o, &file, 1, NULL), 0);
    close(file.fd);
    assert_int_equal(count_parts(f), N_ST);

    snprintf(path, sizeof(path), "%s/0123456789abcdef.ecp", f->parts);
    assert_int_equal(ect_write_file(path, "x", 1), 0);
    snprintf(path, sizeof(path), "%s/fedcba9876543210.ecp.tmp", f->parts);
    assert_int_equal(ect_write_file(path, "x", 1), 0);
    snprintf(path, sizeof(path), "%s/README", f->parts); /* not ours: kept */
    assert_int_equal(ect_write_file(path, "x", 1), 0);
    assert_int_equal(count_parts(f), N_ST + 3);

    /* A catalog created by this very open, next to partition files, is a
     * lost one: its word deletes no partition file. */
    assert_true(ec_catalog_created(f->cat));
    assert_int_equal(ec_import_sweep(f->cat, f->dir), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "lost or truncated"));
    assert_int_equal(count_parts(f), N_ST + 3);
    /* The catalog the daemon opens on its next start existed already. */
    {
        char db[600];
        ec_catalog_close(f->cat);
        snprintf(db, sizeof(db), "%s/%s", f->dir, EC_CATALOG_FILE);
        assert_int_equal(ec_catalog_open(db, &f->cat), 0);
        assert_false(ec_catalog_created(f->cat));
    }
    assert_int_equal(ec_import_sweep(f->cat, f->dir), 2);
    assert_int_equal(count_parts(f), N_ST + 1);
    assert_int_equal(ec_import_sweep(f->cat, f->dir), 0);
    for (size_t i = 0; i < N_ST; i++) {
        void *exp = filled(st_tensors[i].dtype, st_tensors[i].ndim, st_tensors[i].shape,
                           st_tensors[i].seed);
        check_tensor(f, "m", "1", st_tensors[i].name, st_tensors[i].dtype,
                     st_tensors[i].ndim, st_tensors[i].shape, exp);
        free(exp);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_import_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_catalog_refusal_cleans_up, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_endian_npy, setup, teardown),
        cmocka_unit_test_setup_teardown(test_malformed_second_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
        cmocka_unit_test_setup_teardown(test_sweep, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
