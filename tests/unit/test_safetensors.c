/*
 * test_safetensors.c - unit tests of the .safetensors reader
 * (core/safetensors.c): every supported dtype, metadata, and every
 * malformed case (JSON syntax, field types, shapes, offsets, overlaps,
 * unsupported dtypes, header lengths). Single-threaded.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "core/tensorfile.h"
#include "tests/testutil.h"

/* An image with header json and data_len bytes of data. */
static uint8_t *make_st(const char *json, size_t data_len, size_t *len_out)
{
    size_t hl = strlen(json);
    uint8_t *buf = calloc(1, 8 + hl + data_len + 1);

    for (int i = 0; i < 8; i++)
        buf[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, json, hl);
    *len_out = 8 + hl + data_len;
    return buf;
}

static int parse_json(const char *json, size_t data_len, ec_tf_list *out)
{
    size_t len;
    uint8_t *buf = make_st(json, data_len, &len);
    int rc = ec_safetensors_parse_buf(buf, len, out);
    free(buf);
    return rc;
}

static void expect_fail(const char *json, size_t data_len, int code, const char *msg)
{
    ec_tf_list l = {0};
    int rc = parse_json(json, data_len, &l);

    if (rc != code)
        fail_msg("json %s: expected %d, got %d (%s)", json, code, rc, ec_last_error());
    assert_null(l.tensors);
    if (msg && !strstr(ec_last_error(), msg))
        fail_msg("json %s: expected '%s' in: %s", json, msg, ec_last_error());
}

static const ec_tf_tensor *find(const ec_tf_list *l, const char *name)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->tensors[i].name, name))
            return &l->tensors[i];
    fail_msg("tensor %s not found", name);
    return NULL;
}

static void test_all_dtypes_file(void **state)
{
    static const ect_st_tensor ts[] = {
        {"a.f32", EC_DTYPE_F32, 2, {3, 4}, 1},  {"b/f16", EC_DTYPE_F16, 1, {5}, 2},
        {"c_bf16", EC_DTYPE_BF16, 2, {2, 3}, 3}, {"d-f64", EC_DTYPE_F64, 0, {0}, 4},
        {"e", EC_DTYPE_I8, 3, {2, 2, 3}, 5},     {"f", EC_DTYPE_U8, 1, {7}, 6},
        {"g", EC_DTYPE_I32, 2, {1, 9}, 7},       {"h", EC_DTYPE_I64, 2, {4, 0}, 8},
    };
    char *dir = ect_tmpdir("ec-st");
    char path[512];
    ec_tf_list l = {0};
    uint8_t *img, expect[512];
    size_t len;
    int fd;
    (void)state;

    snprintf(path, sizeof(path), "%s/m.safetensors", dir);
    assert_int_equal(ect_write_safetensors(path, ts, 8), 0);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    if (ec_safetensors_parse_fd(fd, &l) != 0)
        fail_msg("%s", ec_last_error());
    close(fd);
    img = ect_read_file(path, &len);
    assert_int_equal(l.n, 8);
    for (size_t i = 0; i < 8; i++) {
        const ec_tf_tensor *t = find(&l, ts[i].name);
        uint64_t n = 1;
        assert_int_equal(t->dtype, ts[i].dtype);
        assert_int_equal(t->ndim, ts[i].ndim);
        for (uint32_t d = 0; d < t->ndim; d++) {
            assert_int_equal(t->shape[d], ts[i].shape[d]);
            n *= ts[i].shape[d];
        }
        assert_false(t->byteswap);
        assert_int_equal(t->data_len, n * ec_dtype_size(t->dtype));
        assert_true(t->data_off + t->data_len <= len);
        ect_fill(t->dtype, ts[i].seed, 0, n, expect);
        assert_memory_equal(img + t->data_off, expect, t->data_len);
    }
    /* sorted by data offset */
    for (size_t i = 1; i < l.n; i++)
        assert_true(l.tensors[i - 1].data_off <= l.tensors[i].data_off);
    ec_tf_list_clear(&l);
    free(img);

    /* truncated file: the last tensor's range leaves the data section */
    assert_int_equal(truncate(path, (off_t)len - 1), 0);
    fd = open(path, O_RDONLY);
    assert_int_equal(ec_safetensors_parse_fd(fd, &l), EC_EFORMAT);
    close(fd);
    assert_int_equal(truncate(path, 20), 0);
    fd = open(path, O_RDONLY);
    assert_int_equal(ec_safetensors_parse_fd(fd, &l), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "larger than the rest"));
    close(fd);
    assert_int_equal(truncate(path, 3), 0);
    fd = open(path, O_RDONLY);
    assert_int_equal(ec_safetensors_parse_fd(fd, &l), EC_EFORMAT);
    close(fd);
    assert_int_equal(ec_safetensors_parse_fd(-1, &l), EC_EINVAL);
    ect_rmtree(dir);
    free(dir);
}

static void test_metadata_and_layout(void **state)
{
    ec_tf_list l = {0};
    const ec_tf_tensor *t;
    (void)state;

    assert_int_equal(parse_json("{\"__metadata__\": {\"format\": \"pt\", \"k\": \"v\"},"
                                " \"w\": {\"data_offsets\": [8, 24], \"shape\": [2, 2],"
                                " \"dtype\": \"F32\"},"
                                " \"b\": {\"dtype\": \"U8\", \"shape\": [8],"
                                " \"data_offsets\": [0, 8]}}   ",
                                24, &l),
                     0);
    assert_int_equal(l.n, 2);
    /* sorted by offset: b first */
    assert_string_equal(l.tensors[0].name, "b");
    t = find(&l, "w");
    assert_int_equal(t->dtype, EC_DTYPE_F32);
    /* absolute offset: 8 + header length + begin */
    assert_int_equal(t->data_off, 8 + strlen("{\"__metadata__\": {\"format\": \"pt\", \"k\": "
                                             "\"v\"}, \"w\": {\"data_offsets\": [8, 24], "
                                             "\"shape\": [2, 2], \"dtype\": \"F32\"}, \"b\": "
                                             "{\"dtype\": \"U8\", \"shape\": [8], "
                                             "\"data_offsets\": [0, 8]}}   ") + 8);
    ec_tf_list_clear(&l);

    /* only metadata, no tensors; unused data is fine */
    assert_int_equal(parse_json("{\"__metadata__\": {}}", 4, &l), 0);
    assert_int_equal(l.n, 0);
    ec_tf_list_clear(&l);
    assert_int_equal(parse_json("{}", 0, &l), 0);
    ec_tf_list_clear(&l);

    /* unicode escapes in names decode */
    assert_int_equal(parse_json("{\"\\u0061b\": {\"dtype\": \"I8\", \"shape\": [], "
                                "\"data_offsets\": [0, 1]}}", 1, &l), 0);
    assert_string_equal(l.tensors[0].name, "ab");
    ec_tf_list_clear(&l);

    /* zero-length tensors overlap nothing */
    assert_int_equal(parse_json("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], "
                                "\"data_offsets\": [0, 8]}, \"z\": {\"dtype\": \"F32\", "
                                "\"shape\": [0, 3], \"data_offsets\": [4, 4]}}", 8, &l), 0);
    ec_tf_list_clear(&l);

    expect_fail("{\"__metadata__\": {\"a\": 1}}", 0, EC_EFORMAT, "strings");
    expect_fail("{\"__metadata__\": [\"a\"]}", 0, EC_EFORMAT, "object");
}

static void test_bad_json(void **state)
{
    (void)state;
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}", 4,
                EC_EFORMAT, "not valid JSON");
    expect_fail("{'a': 1}", 0, EC_EFORMAT, "not valid JSON");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4],}}", 4,
                EC_EFORMAT, "not valid JSON");
    expect_fail("[1, 2]", 0, EC_EFORMAT, "object");
    expect_fail("\"x\"", 0, EC_EFORMAT, "object");
    expect_fail("{\"a\": 1}", 0, EC_EFORMAT, "must be an object");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}} x", 4,
                EC_EFORMAT, "not valid JSON");
    /* invalid UTF-8 and NUL bytes */
    expect_fail("{\"\xff\": {}}", 0, EC_EFORMAT, "UTF-8");
    expect_fail("{\"\xc0\x80\": {}}", 0, EC_EFORMAT, "UTF-8");
    expect_fail("{\"\xed\xa0\x80\": {}}", 0, EC_EFORMAT, "UTF-8");
    {
        ec_tf_list l = {0};
        size_t len;
        uint8_t *buf = make_st("{\"a\" :1}", 0, &len);
        buf[8 + 4] = 0;
        assert_int_equal(ec_safetensors_parse_buf(buf, len, &l), EC_EFORMAT);
        assert_non_null(strstr(ec_last_error(), "NUL"));
        free(buf);
    }
    /* an escaped NUL inside a name */
    expect_fail("{\"a\\u0000b\": {\"dtype\": \"I8\", \"shape\": [], \"data_offsets\": [0, 1]}}",
                1, EC_EFORMAT, NULL);
    /* duplicate names */
    expect_fail("{\"a\": {\"dtype\": \"I8\", \"shape\": [], \"data_offsets\": [0, 1]},"
                " \"a\": {\"dtype\": \"I8\", \"shape\": [], \"data_offsets\": [1, 2]}}",
                2, EC_EFORMAT, "twice");
    /* deep nesting */
    {
        char deep[5000];
        size_t i, n = 2400;
        for (i = 0; i < n; i++)
            deep[i] = '[';
        for (; i < 2 * n; i++)
            deep[i] = ']';
        deep[i] = 0;
        char json[5100];
        snprintf(json, sizeof(json), "{\"__metadata__\": %s}", deep);
        ec_tf_list l = {0};
        int rc = parse_json(json, 0, &l);
        assert_true(rc == EC_EFORMAT);
    }
}

static void test_wrong_types(void **state)
{
    (void)state;
    expect_fail("{\"a\": {\"dtype\": 1, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
                EC_EFORMAT, "'dtype' must be a string");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": 1, \"data_offsets\": [0, 4]}}", 4,
                EC_EFORMAT, "'shape' must be an array");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": {}}}", 4,
                EC_EFORMAT, "'data_offsets' must be an array");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1.0], \"data_offsets\": [0, 4]}}", 4,
                EC_EFORMAT, "non-negative integer");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [\"1\"], \"data_offsets\": [0, 4]}}", 4,
                EC_EFORMAT, "non-negative integer");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
                EC_EFORMAT, "negative");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [99999999999999999999], "
                "\"data_offsets\": [0, 4]}}", 4, EC_EFORMAT, "non-negative integer");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4.5]}}", 4,
                EC_EFORMAT, "non-negative integer");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4,
                EC_EFORMAT, "[begin, end]");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4, 8]}}", 8,
                EC_EFORMAT, "more than 2");
    expect_fail("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, EC_EFORMAT, "dtype");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, EC_EFORMAT,
                "shape");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, EC_EFORMAT, "data_offsets");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], "
                "\"extra\": 1}}", 4, EC_EFORMAT, "extra");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"dtype\": \"F32\", \"shape\": [1], "
                "\"data_offsets\": [0, 4]}}", 4, EC_EFORMAT, "two");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], "
                "\"data_offsets\": [0, 4]}}", 4, EC_EFORMAT, "more than 8");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296], "
                "\"data_offsets\": [0, 4]}}", 4, EC_EFORMAT, "overflow");
}

static void test_ranges(void **state)
{
    (void)state;
    /* overlap */
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}", 12,
                EC_EFORMAT, "overlap");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
                EC_EFORMAT, "overlap");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
                " \"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 16,
                EC_EFORMAT, "overlap");
    /* out of the data section */
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 7,
                EC_EFORMAT, "outside");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": "
                "[18446744073709551608, 0]}}", 8, EC_EFORMAT, NULL);
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 0]}}", 8,
                EC_EFORMAT, "outside");
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": "
                "[9223372036854775800, 9223372036854775807]}}", 8, EC_EFORMAT, "outside");
    /* length mismatch */
    expect_fail("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 12]}}", 12,
                EC_EFORMAT, "need 8");
    expect_fail("{\"a\": {\"dtype\": \"F64\", \"shape\": [2], \"data_offsets\": [0, 8]}}", 8,
                EC_EFORMAT, "need 16");
}

static void test_unsupported_dtype(void **state)
{
    static const char *dts[] = {"BOOL", "F8_E4M3", "F8_E5M2", "U16", "I16", "U32", "U64",
                                "C64", "f32", ""};
    (void)state;

    for (size_t i = 0; i < sizeof(dts) / sizeof(dts[0]); i++) {
        char json[256];
        snprintf(json, sizeof(json), "{\"weird\": {\"dtype\": \"%s\", \"shape\": [1], "
                                     "\"data_offsets\": [0, 1]}}", dts[i]);
        expect_fail(json, 1, EC_EDTYPE, "weird");
        assert_non_null(strstr(ec_last_error(), dts[i]));
    }
}

static void test_header_length(void **state)
{
    ec_tf_list l = {0};
    size_t len;
    uint8_t *buf = make_st("{}", 0, &len);
    (void)state;

    /* larger than the file */
    buf[0] = 3;
    assert_int_equal(ec_safetensors_parse_buf(buf, len, &l), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "larger than the rest"));
    /* huge */
    memset(buf, 0xff, 8);
    assert_int_equal(ec_safetensors_parse_buf(buf, len, &l), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "limit"));
    buf[7] = 0;
    buf[6] = 0;
    buf[5] = 0;
    buf[4] = 0;
    buf[3] = 0x10; /* 256 MiB-ish: above the 100 MiB cap */
    assert_int_equal(ec_safetensors_parse_buf(buf, len, &l), EC_EFORMAT);
    /* too short for an object, or for the prefix */
    memset(buf, 0, 8);
    assert_int_equal(ec_safetensors_parse_buf(buf, len, &l), EC_EFORMAT);
    assert_int_equal(ec_safetensors_parse_buf(buf, 7, &l), EC_EFORMAT);
    assert_int_equal(ec_safetensors_parse_buf(NULL, 0, &l), EC_EFORMAT);
    assert_int_equal(ec_safetensors_parse_buf(buf, len, NULL), EC_EINVAL);
    free(buf);
    assert_null(l.tensors);
}

static void test_too_many_and_long_names(void **state)
{
    size_t cap = (EC_TF_MAX_TENSORS + 2) * 80 + 64, pos = 0;
    char *json = malloc(cap);
    char longname[300];
    ec_tf_list l = {0};
    (void)state;

    pos += (size_t)snprintf(json + pos, cap - pos, "{");
    for (int i = 0; i <= EC_TF_MAX_TENSORS; i++)
        pos += (size_t)snprintf(json + pos, cap - pos,
                                "%s\"t%d\":{\"dtype\":\"U8\",\"shape\":[0],"
                                "\"data_offsets\":[0,0]}", i ? "," : "", i);
    snprintf(json + pos, cap - pos, "}");
    assert_int_equal(parse_json(json, 0, &l), EC_EFORMAT);
    assert_null(l.tensors);
    free(json);

    memset(longname, 'n', 256);
    longname[256] = 0;
    char j2[512];
    snprintf(j2, sizeof(j2), "{\"%s\": {\"dtype\": \"U8\", \"shape\": [1], "
                             "\"data_offsets\": [0, 1]}}", longname);
    expect_fail(j2, 1, EC_EFORMAT, "bytes");
    expect_fail("{\"\": {\"dtype\": \"U8\", \"shape\": [1], \"data_offsets\": [0, 1]}}", 1,
                EC_EFORMAT, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_all_dtypes_file),
        cmocka_unit_test(test_metadata_and_layout),
        cmocka_unit_test(test_bad_json),
        cmocka_unit_test(test_wrong_types),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_unsupported_dtype),
        cmocka_unit_test(test_header_length),
        cmocka_unit_test(test_too_many_and_long_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
