/*
 * test_err.c - common/: error names and per-thread messages, dtypes, the
 * u64 map, the default socket path.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "common/paths.h"
#include "common/u64map.h"
#include "testutil.h"

static void test_strerror_names_every_code(void **state)
{
    (void)state;
    for (int c = 0; c >= EC_E_LAST; c--) {
        const char *s = ec_strerror(c);
        assert_non_null(s);
        assert_non_null(strstr(s, "EC_"));
        for (int d = c - 1; d >= EC_E_LAST; d--)
            assert_string_not_equal(s, ec_strerror(d));
    }
    assert_non_null(strstr(ec_strerror(EC_E_LAST - 1), "unknown"));
    assert_non_null(strstr(ec_strerror(5), "unknown"));
}

static void test_messages(void **state)
{
    (void)state;
    assert_int_equal(ec_seterr(EC_ENOENT, "unknown model '%s'", "bert"), EC_ENOENT);
    assert_string_equal(ec_last_error(), "unknown model 'bert'");
    assert_int_equal(ec_adderr(EC_EIO, "import of %s", "x.npy"), EC_EIO);
    assert_string_equal(ec_last_error(), "import of x.npy: unknown model 'bert'");
    assert_int_equal(ec_seterr_errno(EC_EIO, ENOENT, "open %s", "/nope"), EC_EIO);
    assert_non_null(strstr(ec_last_error(), "open /nope: "));
    assert_non_null(strstr(ec_last_error(), strerror(ENOENT)));
    ec_clearerr();
    assert_string_equal(ec_last_error(), "");
    /* A message longer than the buffer is cut, not overrun. */
    char big[2 * EC_ERRMSG_MAX];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ec_seterr(EC_EINVAL, "%s", big);
    assert_int_equal(strlen(ec_last_error()), EC_ERRMSG_MAX - 1);
    ec_adderr(EC_EINVAL, "%s", big);
    assert_int_equal(strlen(ec_last_error()), EC_ERRMSG_MAX - 1);
}

static void *other_thread(void *arg)
{
    (void)arg;
    ec_seterr(EC_EIO, "from the other thread");
    return strdup(ec_last_error());
}

static void test_messages_are_per_thread(void **state)
{
    pthread_t t;
    void *msg;

    (void)state;
    ec_seterr(EC_ENOENT, "from the main thread");
    assert_int_equal(pthread_create(&t, NULL, other_thread, NULL), 0);
    pthread_join(t, &msg);
    assert_string_equal(msg, "from the other thread");
    assert_string_equal(ec_last_error(), "from the main thread");
    free(msg);
}

static void test_dtypes(void **state)
{
    static const struct { ec_dtype d; const char *n, *alt; size_t sz; } t[] = {
        {EC_DTYPE_F32, "f32", "float32", 4}, {EC_DTYPE_F16, "f16", "float16", 2},
        {EC_DTYPE_BF16, "bf16", "bfloat16", 2}, {EC_DTYPE_F64, "f64", "float64", 8},
        {EC_DTYPE_I8, "i8", "int8", 1}, {EC_DTYPE_U8, "u8", "uint8", 1},
        {EC_DTYPE_I32, "i32", "int32", 4}, {EC_DTYPE_I64, "i64", "int64", 8},
    };
    (void)state;
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        assert_string_equal(ec_dtype_name(t[i].d), t[i].n);
        assert_int_equal(ec_dtype_size(t[i].d), t[i].sz);
        assert_int_equal(ec_dtype_from_name(t[i].n), t[i].d);
        assert_int_equal(ec_dtype_from_name(t[i].alt), t[i].d);
        assert_true(ec_dtype_valid(t[i].d));
    }
    assert_null(ec_dtype_name(EC_DTYPE_INVALID));
    assert_null(ec_dtype_name((ec_dtype)99));
    assert_int_equal(ec_dtype_size((ec_dtype)99), 0);
    assert_int_equal(ec_dtype_from_name("complex64"), EC_DTYPE_INVALID);
    assert_int_equal(ec_dtype_from_name(NULL), EC_DTYPE_INVALID);
    assert_false(ec_dtype_valid(0));
    assert_false(ec_dtype_valid(9));
}

static void test_u64map_against_reference(void **state)
{
    enum { N = 20000 };
    ec_u64map m = {0};
    uint64_t *ref = calloc(N, sizeof(*ref)); /* ref[k] = value+1, 0 = absent */
    unsigned seed = 7;

    (void)state;
    for (int step = 0; step < 200000; step++) {
        uint64_t k = (uint64_t)(rand_r(&seed) % N) + 1;
        int op = rand_r(&seed) % 3;
        if (op == 0) {
            assert_int_equal(ec_u64map_put(&m, k, (void *)(uintptr_t)(step + 1)), 0);
            ref[k - 1] = (uint64_t)step + 1;
        } else if (op == 1) {
            void *v = ec_u64map_del(&m, k);
            assert_int_equal((uintptr_t)v, ref[k - 1]);
            ref[k - 1] = 0;
        } else {
            assert_int_equal((uintptr_t)ec_u64map_get(&m, k), ref[k - 1]);
        }
    }
    size_t live = 0;
    for (int k = 0; k < N; k++) {
        live += ref[k] != 0;
        assert_int_equal((uintptr_t)ec_u64map_get(&m, (uint64_t)k + 1), ref[k]);
    }
    assert_int_equal(m.len, live);
    assert_int_equal(ec_u64map_put(&m, 0, NULL), EC_EINVAL);
    assert_null(ec_u64map_get(&m, 0));
    ec_u64map_free(&m);
    free(ref);
}

static void test_default_socket(void **state)
{
    char buf[108];

    (void)state;
    setenv("EMBCACHE_SOCKET", "/x/y.sock", 1);
    assert_string_equal(ec_default_socket(buf, sizeof(buf)), "/x/y.sock");
    unsetenv("EMBCACHE_SOCKET");
    assert_true(strlen(ec_default_socket(buf, sizeof(buf))) > 0);
    assert_non_null(strstr(buf, "embcache"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_names_every_code),
        cmocka_unit_test(test_messages),
        cmocka_unit_test(test_messages_are_per_thread),
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_u64map_against_reference),
        cmocka_unit_test(test_default_socket),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
