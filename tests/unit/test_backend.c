/*
 * test_backend.c - cuda/: the device backend interface. The same gather
 * cases run against every backend this machine has; without a GPU the CUDA
 * cases report themselves skipped.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "cuda/backend.h"
#include "testutil.h"

static void check_gather(const ec_backend *b, size_t row_bytes, size_t n, bool scatter)
{
    uint8_t *src = malloc(n * row_bytes), *dst = malloc(n * row_bytes);
    const void **ptrs = malloc(n * sizeof(*ptrs));
    size_t *rows = malloc(n * sizeof(*rows));

    for (size_t i = 0; i < n * row_bytes; i++)
        src[i] = (uint8_t)(i * 131 + 7);
    memset(dst, 0xee, n * row_bytes);
    for (size_t i = 0; i < n; i++) {
        /* Row i of the output is source row (i * 7) % n. */
        size_t s = (i * 7) % n;
        ptrs[i] = src + s * row_bytes;
        rows[i] = scatter ? n - 1 - i : i;
    }
    ec_gather_desc g = {.src = ptrs, .n = n, .row_bytes = row_bytes, .dst = dst,
                        .dst_rows = scatter ? rows : NULL, .device = -1};
    assert_int_equal(b->gather(&g), 0);
    for (size_t i = 0; i < n; i++)
        assert_memory_equal(dst + rows[i] * row_bytes, src + ((i * 7) % n) * row_bytes,
                            row_bytes);
    free(src);
    free(dst);
    free(ptrs);
    free(rows);
}

static void gather_suite(const ec_backend *b)
{
    static const size_t sizes[] = {1, 7, 64, 256, 512, 4096};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        check_gather(b, sizes[i], 257, false);
        check_gather(b, sizes[i], 257, true);
    }
}

static void test_cpu_gather(void **state)
{
    (void)state;
    gather_suite(&ec_backend_cpu);
    assert_int_equal(ec_backend_cpu.device_count(), 0);
}

static void test_cpu_refuses_device_output(void **state)
{
    uint8_t a[4] = {1, 2, 3, 4}, d[4];
    const void *p = a;
    ec_gather_desc g = {.src = &p, .n = 1, .row_bytes = 4, .dst = d, .device = 0};

    (void)state;
    assert_int_equal(ec_backend_cpu.gather(&g), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "GPU 0"));
}

static void test_auto_selects_a_backend(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_AUTO);

    (void)state;
    assert_non_null(b);
    assert_ptr_equal(ec_backend_get(EC_BACKEND_CPU), &ec_backend_cpu);
    /* AUTO without a usable GPU is the CPU backend. */
    if (!ec_backend_get(EC_BACKEND_CUDA))
        assert_ptr_equal(b, &ec_backend_cpu);
    gather_suite(b);
}

static void test_cuda_gather(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_CUDA);

    (void)state;
    assert_non_null(b);
    assert_true(b->device_count() > 0);
    gather_suite(b); /* host outputs go through the same code path */
}

/* `test_backend cuda` runs the CUDA cases alone and exits 77 (skipped) when
 * this build or this machine has no usable GPU. */
int main(int argc, char **argv)
{
    const struct CMUnitTest cpu[] = {
        cmocka_unit_test(test_cpu_gather),
        cmocka_unit_test(test_cpu_refuses_device_output),
        cmocka_unit_test(test_auto_selects_a_backend),
    };
    const struct CMUnitTest cuda[] = {
        cmocka_unit_test(test_cuda_gather),
    };

    if (argc > 1 && !strcmp(argv[1], "cuda")) {
        if (!ec_backend_get(EC_BACKEND_CUDA)) {
            printf("skipped: %s\n", ec_last_error());
            return EC_TEST_SKIP;
        }
        return cmocka_run_group_tests(cuda, NULL, NULL);
    }
    return cmocka_run_group_tests(cpu, NULL, NULL);
}
