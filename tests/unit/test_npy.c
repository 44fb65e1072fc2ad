/*
 * test_npy.c - unit tests of the .npy reader (core/npy.c): every supported
 * dtype, format versions 1/2/3, dict syntax variants, big-endian input,
 * 0-d and 1-d arrays, and every malformed case. Headers are built by hand
 * here so each byte is under the test's control; ect_write_npy covers the
 * file path. Single-threaded.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "core/tensorfile.h"
#include "tests/testutil.h"

/* Build a .npy image: magic, version, header length, dict padded with
 * spaces + '\n' to a multiple of 64, then data_len bytes of 0xAB. */
static uint8_t *make_npy(int major, const char *dict, size_t data_len, size_t *len_out)
{
    size_t pre = major == 1 ? 10 : 12, dl = strlen(dict);
    size_t total = (pre + dl + 1 + 63) / 64 * 64, hl = total - pre;
    uint8_t *buf = malloc(total + data_len + 1);

    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (uint8_t)major;
    buf[7] = 0;
    if (major == 1) {
        buf[8] = (uint8_t)hl;
        buf[9] = (uint8_t)(hl >> 8);
    } else {
        for (int i = 0; i < 4; i++)
            buf[8 + i] = (uint8_t)(hl >> (8 * i));
    }
    memset(buf + pre, ' ', hl);
    memcpy(buf + pre, dict, dl);
    buf[total - 1] = '\n';
    memset(buf + total, 0xab, data_len);
    *len_out = total + data_len;
    return buf;
}

/* Parse dict with data_len bytes of data; expect rc. */
static int parse_dict(int major, const char *dict, size_t data_len, ec_tf_list *out)
{
    size_t len;
    uint8_t *buf = make_npy(major, dict, data_len, &len);
    int rc = ec_npy_parse_buf(buf, len, "t", out);
    free(buf);
    return rc;
}

static void expect_fail(const char *dict, size_t data_len, int code, const char *msg)
{
    ec_tf_list l = {0};
    int rc = parse_dict(1, dict, data_len, &l);

    if (rc != code)
        fail_msg("dict %s: expected %d, got %d (%s)", dict, code, rc, ec_last_error());
    assert_null(l.tensors);
    if (msg && !strstr(ec_last_error(), msg))
        fail_msg("dict %s: expected '%s' in: %s", dict, msg, ec_last_error());
}

static void test_all_dtypes(void **state)
{
    static const struct {
        const char *descr;
        ec_dtype dtype;
        bool swap;
    } cases[] = {
        {"<f4", EC_DTYPE_F32, false}, {"<f2", EC_DTYPE_F16, false},
        {"<f8", EC_DTYPE_F64, false}, {"|i1", EC_DTYPE_I8, false},
        {"|u1", EC_DTYPE_U8, false},  {"<i4", EC_DTYPE_I32, false},
        {"<i8", EC_DTYPE_I64, false}, {"<i1", EC_DTYPE_I8, false},
        {">u1", EC_DTYPE_U8, false},  {"=i1", EC_DTYPE_I8, false},
        {"=f4", EC_DTYPE_F32, false}, {">f4", EC_DTYPE_F32, true},
        {">f2", EC_DTYPE_F16, true},  {">f8", EC_DTYPE_F64, true},
        {">i4", EC_DTYPE_I32, true},  {">i8", EC_DTYPE_I64, true},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char dict[128];
        ec_tf_list l = {0};
        size_t es = ec_dtype_size(cases[i].dtype);
        snprintf(dict, sizeof(dict),
                 "{'descr': '%s', 'fortran_order': False, 'shape': (3, 4), }", cases[i].descr);
        if (parse_dict(1, dict, 12 * es, &l) != 0)
            fail_msg("%s: %s", cases[i].descr, ec_last_error());
        assert_int_equal(l.n, 1);
        assert_string_equal(l.tensors[0].name, "t");
        assert_int_equal(l.tensors[0].dtype, cases[i].dtype);
        assert_int_equal(l.tensors[0].byteswap, cases[i].swap);
        assert_int_equal(l.tensors[0].ndim, 2);
        assert_int_equal(l.tensors[0].shape[0], 3);
        assert_int_equal(l.tensors[0].shape[1], 4);
        assert_int_equal(l.tensors[0].data_off, (10 + strlen(dict) + 1 + 63) / 64 * 64);
        assert_int_equal(l.tensors[0].data_len, 12 * es);
        ec_tf_list_clear(&l);
        assert_null(l.tensors);
    }
}

static void test_versions(void **state)
{
    const char *dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }";
    (void)state;

    for (int major = 1; major <= 3; major++) {
        ec_tf_list l = {0};
        size_t len;
        uint8_t *buf = make_npy(major, dict, 20, &len);
        assert_int_equal(ec_npy_parse_buf(buf, len, "v", &l), 0);
        assert_int_equal(l.tensors[0].ndim, 1);
        assert_int_equal(l.tensors[0].shape[0], 5);
        assert_int_equal(l.tensors[0].data_off, len - 20);
        assert_int_equal(l.tensors[0].data_off % 64, 0);
        ec_tf_list_clear(&l);
        /* wrong minor / unknown major */
        buf[7] = 1;
        assert_int_equal(ec_npy_parse_buf(buf, len, "v", &l), EC_EFORMAT);
        buf[7] = 0;
        buf[6] = 4;
        assert_int_equal(ec_npy_parse_buf(buf, len, "v", &l), EC_EFORMAT);
        assert_non_null(strstr(ec_last_error(), "version 4.0"));
        free(buf);
    }
}

static void test_syntax_variants(void **state)
{
    static const char *dicts[] = {
        "{'shape': (3, 4), 'descr': '<f4', 'fortran_order': False}",
        "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (3, 4)}",
        "{'fortran_order':False,'shape':(3,4,),'descr':'<f4',}",
        "  {  'descr' :  '<f4' ,\t'fortran_order' : False , 'shape' : ( 3 , 4 ) , }  ",
        "{'descr': '<f4', 'fortran_order': False, 'shape': (3L, 4L), }",
    };
    (void)state;

    for (size_t i = 0; i < sizeof(dicts) / sizeof(dicts[0]); i++) {
        ec_tf_list l = {0};
        if (parse_dict(1, dicts[i], 48, &l) != 0)
            fail_msg("%s: %s", dicts[i], ec_last_error());
        assert_int_equal(l.tensors[0].dtype, EC_DTYPE_F32);
        assert_int_equal(l.tensors[0].ndim, 2);
        assert_int_equal(l.tensors[0].shape[1], 4);
        ec_tf_list_clear(&l);
    }
}

static void test_scalar_and_empty(void **state)
{
    ec_tf_list l = {0};
    (void)state;

    assert_int_equal(parse_dict(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (), }",
                                8, &l), 0);
    assert_int_equal(l.tensors[0].ndim, 0);
    assert_int_equal(l.tensors[0].data_len, 8);
    ec_tf_list_clear(&l);
    assert_int_equal(parse_dict(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 7), }",
                                0, &l), 0);
    assert_int_equal(l.tensors[0].data_len, 0);
    ec_tf_list_clear(&l);
    /* eight dimensions are the limit */
    assert_int_equal(parse_dict(1, "{'descr': '|u1', 'fortran_order': False, "
                                   "'shape': (1, 2, 1, 2, 1, 2, 1, 2), }", 16, &l), 0);
    assert_int_equal(l.tensors[0].ndim, 8);
    ec_tf_list_clear(&l);
}

static void test_bad_preamble(void **state)
{
    const char *dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
    ec_tf_list l = {0};
    size_t len;
    uint8_t *buf = make_npy(1, dict, 8, &len);
    (void)state;

    /* bad magic */
    buf[1] = 'X';
    assert_int_equal(ec_npy_parse_buf(buf, len, "t", &l), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "magic"));
    buf[1] = 'N';
    /* truncated inside the preamble and the header */
    assert_int_equal(ec_npy_parse_buf(buf, 0, "t", &l), EC_EFORMAT);
    assert_int_equal(ec_npy_parse_buf(buf, 5, "t", &l), EC_EFORMAT);
    assert_int_equal(ec_npy_parse_buf(buf, 9, "t", &l), EC_EFORMAT);
    assert_int_equal(ec_npy_parse_buf(buf, 40, "t", &l), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "header is truncated"));
    /* header length beyond the file */
    buf[8] = 0xff;
    buf[9] = 0x7f;
    assert_int_equal(ec_npy_parse_buf(buf, len, "t", &l), EC_EFORMAT);
    free(buf);

    /* v2 header length above the limit */
    buf = make_npy(2, dict, 8, &len);
    buf[11] = 0x10;
    assert_int_equal(ec_npy_parse_buf(buf, len, "t", &l), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "limit"));
    free(buf);
    assert_null(l.tensors);
    assert_int_equal(ec_npy_parse_buf(NULL, 0, "t", &l), EC_EFORMAT);
    assert_int_equal(ec_npy_parse_buf("\x93NUMPY\x01\x00\x00\x00", 10, NULL, &l), EC_EINVAL);
}

static void test_bad_dict(void **state)
{
    (void)state;
    expect_fail("", 0, EC_EFORMAT, "'{'");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), ", 8, EC_EFORMAT, NULL);
    expect_fail("{'descr': '<f4' 'fortran_order': False, 'shape': (2,)}", 8, EC_EFORMAT, NULL);
    expect_fail("{'descr' '<f4', 'fortran_order': False, 'shape': (2,)}", 8, EC_EFORMAT, ":");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x}", 8, EC_EFORMAT,
                "unterminated");
    expect_fail("{'descr': '<f4', 'fortran_order': false, 'shape': (2,)}", 8, EC_EFORMAT, NULL);
    expect_fail("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}", 8, EC_EFORMAT, NULL);
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': [2]}", 8, EC_EFORMAT, "tuple");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2)}", 8, EC_EFORMAT,
                "trailing comma");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,,)}", 8, EC_EFORMAT, NULL);
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,)}", 8, EC_EFORMAT,
                NULL);
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} x", 8, EC_EFORMAT,
                "after");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)}}", 8, EC_EFORMAT,
                NULL);
    expect_fail("{'descr': 'a\\'b', 'fortran_order': False, 'shape': (2,)}", 8, EC_EFORMAT,
                NULL);
    expect_fail("{descr: '<f4', 'fortran_order': False, 'shape': (2,)}", 8, EC_EFORMAT, NULL);
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1}", 8,
                EC_EFORMAT, "extra");
    expect_fail("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}", 8,
                EC_EFORMAT, "duplicate");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), \x01}", 8, EC_EFORMAT,
                NULL);
}

static void test_missing_keys(void **state)
{
    (void)state;
    expect_fail("{'fortran_order': False, 'shape': (2,)}", 8, EC_EFORMAT, "descr");
    expect_fail("{'descr': '<f4', 'shape': (2,)}", 8, EC_EFORMAT, "fortran_order");
    expect_fail("{'descr': '<f4', 'fortran_order': False}", 8, EC_EFORMAT, "shape");
    expect_fail("{}", 0, EC_EFORMAT, "missing");
}

static void test_fortran(void **state)
{
    (void)state;
    expect_fail("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16, EC_EFORMAT,
                "np.ascontiguousarray");
}

static void test_unsupported_descr(void **state)
{
    static const char *descrs[] = {"|b1", "<c8", "<U5", "|O", "<i2", "<u4", "<f16", "|S3",
                                   "<M8[ns]", "xf4", "", "<f4 "};
    (void)state;

    for (size_t i = 0; i < sizeof(descrs) / sizeof(descrs[0]); i++) {
        char dict[128];
        snprintf(dict, sizeof(dict), "{'descr': '%s', 'fortran_order': False, 'shape': (2,)}",
                 descrs[i]);
        expect_fail(dict, 8, EC_EDTYPE, descrs[i]);
    }
    expect_fail("{'descr': '|b1', 'fortran_order': False, 'shape': (2,)}", 2, EC_EDTYPE,
                "bool");
    expect_fail("{'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, "
                "'shape': (2,)}", 16, EC_EDTYPE, "structured");
    expect_fail("{'descr': '|f4', 'fortran_order': False, 'shape': (2,)}", 8, EC_EFORMAT,
                "byte order");
}

static void test_bad_shape(void **state)
{
    (void)state;
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}", 8, EC_EFORMAT,
                "negative");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", 8,
                EC_EFORMAT, "64 bits");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296)}",
                8, EC_EFORMAT, "overflow");
    expect_fail("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904,)}",
                8, EC_EFORMAT, "overflow");
    expect_fail("{'descr': '|u1', 'fortran_order': False, 'shape': (1,1,1,1,1,1,1,1,1)}", 1,
                EC_EFORMAT, "dimensions");
}

static void test_data_length(void **state)
{
    const char *dict = "{'descr': '<i4', 'fortran_order': False, 'shape': (3, 4), }";
    (void)state;

    expect_fail(dict, 47, EC_EFORMAT, "data is truncated: expected 48 bytes after the header, "
                                      "found 47");
    expect_fail(dict, 0, EC_EFORMAT, "truncated");
    expect_fail(dict, 49, EC_EFORMAT, "unexpected bytes");
}

static void test_fd_and_stem(void **state)
{
    char *dir = ect_tmpdir("ec-npy");
    char path[512], stem[64];
    const uint64_t shape[] = {7, 3};
    ec_tf_list l = {0};
    uint8_t *img, expect[84];
    size_t len;
    int fd;
    (void)state;

    snprintf(path, sizeof(path), "%s/emb.npy", dir);
    assert_int_equal(ect_write_npy(path, EC_DTYPE_I32, 2, shape, 9), 0);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(ec_npy_stem(path, stem, sizeof(stem)), 0);
    assert_string_equal(stem, "emb");
    assert_int_equal(ec_npy_parse_fd(fd, stem, &l), 0);
    assert_int_equal(l.tensors[0].dtype, EC_DTYPE_I32);
    assert_int_equal(l.tensors[0].data_len, 84);
    img = ect_read_file(path, &len);
    ect_fill(EC_DTYPE_I32, 9, 0, 21, expect);
    assert_memory_equal(img + l.tensors[0].data_off, expect, 84);
    assert_int_equal(l.tensors[0].data_off + 84, len);
    ec_tf_list_clear(&l);
    free(img);

    /* truncated file through the fd path */
    close(fd);
    assert_int_equal(truncate(path, 100), 0);
    fd = open(path, O_RDONLY);
    assert_int_equal(ec_npy_parse_fd(fd, "emb", &l), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "truncated"));
    close(fd);
    assert_int_equal(truncate(path, 20), 0);
    fd = open(path, O_RDONLY);
    assert_int_equal(ec_npy_parse_fd(fd, "emb", &l), EC_EFORMAT);
    close(fd);
    assert_int_equal(ec_npy_parse_fd(-1, "emb", &l), EC_EINVAL);
    fd = open(dir, O_RDONLY);
    assert_int_equal(ec_npy_parse_fd(fd, "emb", &l), EC_EFORMAT); /* not a regular file */
    close(fd);

    assert_int_equal(ec_npy_stem("a/b/word_emb.npy", stem, sizeof(stem)), 0);
    assert_string_equal(stem, "word_emb");
    assert_int_equal(ec_npy_stem("x.npy", stem, sizeof(stem)), 0);
    assert_string_equal(stem, "x");
    assert_int_equal(ec_npy_stem("dir/.npy", stem, sizeof(stem)), EC_EINVAL);
    assert_int_equal(ec_npy_stem("dir/", stem, sizeof(stem)), EC_EINVAL);
    assert_int_equal(ec_npy_stem("abcdef.npy", stem, 4), EC_EINVAL);

    /* a name that does not fit */
    {
        char longname[300];
        size_t ilen;
        uint8_t *buf = make_npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }",
                                4, &ilen);
        memset(longname, 'a', sizeof(longname) - 1);
        longname[sizeof(longname) - 1] = '\0';
        assert_int_equal(ec_npy_parse_buf(buf, ilen, longname, &l), EC_EINVAL);
        assert_int_equal(ec_npy_parse_buf(buf, ilen, "", &l), EC_EINVAL);
        free(buf);
    }
    ect_rmtree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_dtypes),
        cmocka_unit_test(test_versions),
        cmocka_unit_test(test_syntax_variants),
        cmocka_unit_test(test_scalar_and_empty),
        cmocka_unit_test(test_bad_preamble),
        cmocka_unit_test(test_bad_dict),
        cmocka_unit_test(test_missing_keys),
        cmocka_unit_test(test_fortran),
        cmocka_unit_test(test_unsupported_descr),
        cmocka_unit_test(test_bad_shape),
        cmocka_unit_test(test_data_length),
        cmocka_unit_test(test_fd_and_stem),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
