/*
 * test_backend.c - cuda/: the device backend interface. The same gather
 * cases run against every backend this machine has; without a GPU the CUDA
 * cases report themselves skipped.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "cuda/backend.h"
#include "testutil.h"

static void mark_done(void *arg)
{
    (*(int *)arg)++;
}

static void check_gather(const ec_backend *b, int device, size_t row_bytes, size_t n,
                         bool scatter)
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
    int done = 0;
    ec_gather_desc g = {.src = ptrs, .n = n, .row_bytes = row_bytes,
                        .src_dtype = EC_DTYPE_U8, .dst_dtype = EC_DTYPE_U8, .dst = dst,
                        .dst_rows = scatter ? rows : NULL, .device = device,
                        .done = mark_done, .done_arg = &done};
    assert_int_equal(b->gather(&g), 0);
    /* Synchronous here (no stream, no EMBCACHE_EMU_ASYNC_US): completion
     * has run, exactly once. */
    assert_int_equal(done, 1);
    for (size_t i = 0; i < n; i++)
        assert_memory_equal(dst + rows[i] * row_bytes, src + ((i * 7) % n) * row_bytes,
                            row_bytes);
    free(src);
    free(dst);
    free(ptrs);
    free(rows);
}

/* f32 rows converted to f16 / bf16 land where they should, each element
 * what the scalar conversion gives. */
static void check_convert(const ec_backend *b, int device, ec_dtype to)
{
    enum { N = 33, COLS = 19 };
    float *src = malloc(N * COLS * sizeof(float));
    uint16_t *dst = malloc(N * COLS * sizeof(uint16_t));
    const void *ptrs[N];

    for (size_t i = 0; i < N * COLS; i++)
        src[i] = (float)((double)i * 0.37 - 100.0) * (i % 3 ? 1.0f : 1e-5f);
    for (size_t i = 0; i < N; i++)
        ptrs[i] = src + ((i * 5) % N) * COLS;
    ec_gather_desc g = {.src = ptrs, .n = N, .row_bytes = COLS * sizeof(float),
                        .src_dtype = EC_DTYPE_F32, .dst_dtype = to, .dst = dst,
                        .device = device};
    assert_int_equal(b->gather(&g), 0);
    for (size_t i = 0; i < N; i++)
        for (size_t k = 0; k < COLS; k++) {
            float v = src[((i * 5) % N) * COLS + k];
            uint16_t want = to == EC_DTYPE_F16 ? ec_f32_to_f16(v) : ec_f32_to_bf16(v);
            assert_int_equal(dst[i * COLS + k], want);
        }
    /* An unsupported pair is refused, naming both dtypes. */
    g.dst_dtype = EC_DTYPE_I8;
    assert_int_equal(b->gather(&g), EC_EDTYPE);
    free(src);
    free(dst);
}

/* The same cases against every backend: host outputs, and outputs on
 * `device` when the backend has one (>= 0). */
static void gather_suite(const ec_backend *b, int device)
{
    static const size_t sizes[] = {1, 7, 64, 256, 512, 4096};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        check_gather(b, -1, sizes[i], 257, false);
        check_gather(b, -1, sizes[i], 257, true);
        if (device >= 0) {
            check_gather(b, device, sizes[i], 257, false);
            check_gather(b, device, sizes[i], 257, true);
        }
    }
    check_convert(b, -1, EC_DTYPE_F16);
    check_convert(b, -1, EC_DTYPE_BF16);
    if (device >= 0) {
        check_convert(b, device, EC_DTYPE_F16);
        check_convert(b, device, EC_DTYPE_BF16);
    }
}

static void test_cpu_gather(void **state)
{
    (void)state;
    gather_suite(&ec_backend_cpu, -1);
    assert_int_equal(ec_backend_cpu.device_count(), 0);
    /* No device tier. */
    assert_null(ec_backend_cpu.slab_create);
    assert_null(ec_backend_cpu.host_register);
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
    gather_suite(b, -1);
}

/* The GPU emulator: device outputs (host memory to it), and its slabs as a
 * daemon and a client use them - a write is visible through the read-only
 * mapping a client opens from the descriptor. */
static void test_emu(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_EMU);
    ec_slab slab;
    void *base = NULL, *dev = NULL;
    uint8_t data[8192];

    (void)state;
    setenv("EMBCACHE_EMU_GPUS", "2", 1);
    assert_int_equal(b->device_count(), 2);
    gather_suite(b, 1);
    assert_int_equal(b->host_register(data, sizeof(data), true, 1, &dev), 0);
    assert_ptr_equal(dev, data);
    assert_int_equal(b->slab_create(1, 1 << 20, &slab), 0);
    assert_true(slab.fd >= 0);
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 7);
    assert_int_equal(b->slab_write(&slab, 4096, data, sizeof(data)), 0);
    assert_int_equal(b->slab_write(&slab, (1 << 20) - 4096, data, sizeof(data)), EC_EINVAL);
    assert_int_equal(b->slab_open(1, slab.handle, slab.fd, 1 << 20, &base), 0);
    assert_memory_equal((uint8_t *)base + 4096, data, sizeof(data));
    assert_int_equal(b->slab_open(1, slab.handle, -1, 1 << 20, &base), EC_EPROTO);
    b->slab_close(1, base, 1 << 20);
    b->slab_destroy(&slab);
    /* A device that does not exist. */
    {
        const void *p = data;
        uint8_t d[4];
        ec_gather_desc g = {.src = &p, .n = 1, .row_bytes = 4, .src_dtype = EC_DTYPE_U8,
                            .dst_dtype = EC_DTYPE_U8, .dst = d, .device = 2};
        assert_int_equal(b->gather(&g), EC_EINVAL);
        assert_non_null(strstr(ec_last_error(), "device 2"));
    }
}

static void test_cuda_gather(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_CUDA);

    (void)state;
    assert_non_null(b);
    assert_true(b->device_count() > 0);
    gather_suite(b, -1); /* device outputs: test_gather_kernel and test_devtier cuda */
}

/* `test_backend cuda` runs the CUDA cases alone and exits 77 (skipped) when
 * this build or this machine has no usable GPU. */
int main(int argc, char **argv)
{
    const struct CMUnitTest cpu[] = {
        cmocka_unit_test(test_cpu_gather),
        cmocka_unit_test(test_cpu_refuses_device_output),
        cmocka_unit_test(test_auto_selects_a_backend),
        cmocka_unit_test(test_emu),
    };
    const struct CMUnitTest cuda[] = {
        cmocka_unit_test(test_cuda_gather),
    };

    if (argc > 1 && !strcmp(argv[1], "cuda")) {
        if (!ec_backend_get(EC_BACKEND_CUDA))
            return ect_gpu_unavailable(ec_last_error(), false);
        return cmocka_run_group_tests(cuda, NULL, NULL);
    }
    return cmocka_run_group_tests(cpu, NULL, NULL);
}
