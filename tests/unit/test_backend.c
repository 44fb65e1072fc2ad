/*
 * test_backend.c - cuda/: the device backend interface. The same gather
 * cases run against every backend this machine has; without a GPU the CUDA
 * cases report themselves skipped.
 */
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#ifdef EC_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

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
    ec_host_map map;
    void *base = NULL;
    uint8_t data[8192];

    (void)state;
    setenv("EMBCACHE_EMU_GPUS", "2", 1);
    assert_int_equal(b->device_count(), 2);
    gather_suite(b, 1);
    unsetenv("EMBCACHE_REGISTER_MAX");
    assert_int_equal(b->host_register(data, sizeof(data), true, 1, &map), 0);
    assert_int_equal(map.n, 1);
    assert_ptr_equal(map.dev[0], data);
    assert_ptr_equal(ec_host_map_addr(&map, 100, 50), data + 100);
    b->host_unregister(data);
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

/* Device addresses of a chunked registration: each chunk by its own
 * address; a range across two chunks only when they are contiguous. */
static void test_host_map_addr(void **state)
{
    static uint8_t a[3][4096];
    ec_host_map m = {.chunk = 4096, .len = 3 * 4096 - 100, .n = 3};

    (void)state;
    /* Chunks 0 and 1 contiguous, 2 elsewhere (a[2] before a[0] here). */
    m.dev[0] = a[1] - 0;
    m.dev[1] = a[2];
    m.dev[2] = a[0];
    assert_ptr_equal(ec_host_map_addr(&m, 10, 100), a[1] + 10);
    assert_ptr_equal(ec_host_map_addr(&m, 4096 + 7, 100), a[2] + 7);
    assert_ptr_equal(ec_host_map_addr(&m, 2 * 4096 + 7, 100), a[0] + 7);
    /* Across 0|1: contiguous, fine. Across 1|2: not contiguous. */
    assert_ptr_equal(ec_host_map_addr(&m, 4000, 200), a[1] + 4000);
    assert_null(ec_host_map_addr(&m, 2 * 4096 - 8, 16));
    /* Past the end. */
    assert_null(ec_host_map_addr(&m, 3 * 4096 - 150, 100));
    m.n = 0;
    assert_null(ec_host_map_addr(&m, 0, 1));
}

/* What the emulator simulates of real GPUs: no read-only registration,
 * stream capture, EXCLUSIVE_PROCESS, registration in chunks whose device
 * addresses are not contiguous. */
static void test_emu_conditions(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_EMU);
    ec_device_caps caps;
    ec_host_map m;
    size_t len = 16 * 4096;
    long regs0 = ec_backend_emu_readonly_registrations();
    int fd = memfd_create("test-emu-reg", 0);
    uint8_t *base;

    (void)state;
    setenv("EMBCACHE_EMU_GPUS", "2", 1);
    assert_int_equal(b->device_caps(1, &caps), 0);
    assert_true(caps.readonly_register);
    assert_false(caps.exclusive_process);
    assert_int_equal(b->stream_capturing(1, NULL), 0);
    setenv("EMBCACHE_EMU_NO_READONLY_REGISTER", "1", 1);
    setenv("EMBCACHE_EMU_EXCLUSIVE", "1", 1);
    setenv("EMBCACHE_EMU_CAPTURING", "1", 1);
    assert_int_equal(b->device_caps(1, &caps), 0);
    assert_false(caps.readonly_register);
    assert_true(caps.exclusive_process);
    assert_int_equal(b->stream_capturing(1, NULL), 1);
    unsetenv("EMBCACHE_EMU_EXCLUSIVE");
    unsetenv("EMBCACHE_EMU_CAPTURING");

    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)len), 0);
    base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(base != MAP_FAILED);
    for (size_t i = 0; i < len; i++)
        base[i] = (uint8_t)(i * 13 + i / 4096);
    /* Unsupported read-only registration fails, as CUDA's does. */
    assert_int_equal(b->host_register(base, len, true, 1, &m), EC_EDEVICE);
    assert_non_null(strstr(ec_last_error(), "cudaErrorNotSupported"));
    unsetenv("EMBCACHE_EMU_NO_READONLY_REGISTER");
    /* Chunks of 3 pages: 6 of them (the last one page), each an alias of
     * its own pages, not contiguous with the next. */
    setenv("EMBCACHE_REGISTER_MAX", "12288", 1);
    assert_int_equal(b->host_register(base, len, true, 1, &m), 0);
    assert_int_equal(ec_backend_emu_readonly_registrations() - regs0, 2);
    assert_int_equal(m.n, 6);
    assert_int_equal(m.chunk, 12288);
    for (uint32_t k = 0; k < m.n; k++) {
        size_t n = len - k * m.chunk < m.chunk ? len - k * m.chunk : m.chunk;
        assert_ptr_not_equal(m.dev[k], base + k * m.chunk);
        assert_memory_equal(m.dev[k], base + k * m.chunk, n);
        if (k + 1 < m.n)
            assert_ptr_not_equal(m.dev[k + 1], m.dev[k] + m.chunk);
    }
    assert_memory_equal(ec_host_map_addr(&m, 5 * 4096 + 3, 100), base + 5 * 4096 + 3, 100);
    assert_null(ec_host_map_addr(&m, 12288 - 4, 8)); /* straddles: staged */
    base[7 * 4096] ^= 0xff; /* the alias sees writes to the segment */
    assert_int_equal(((const uint8_t *)ec_host_map_addr(&m, 7 * 4096, 1))[0], base[7 * 4096]);
    b->host_unregister(base);
    unsetenv("EMBCACHE_REGISTER_MAX");
    munmap(base, len);
    close(fd);
}

/* The staging buffer is not handed out again while an asynchronous gather
 * that reads it is queued. */
static void test_emu_stage_waits(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_EMU);
    _Atomic int stream = 0;
    uint8_t *host, out[64];
    const void *dev, *src;

    (void)state;
    setenv("EMBCACHE_EMU_GPUS", "1", 1);
    assert_int_equal(b->stage_get(0, 64, (void **)&host, &dev), 0);
    memset(host, 0x5a, 64);
    src = dev;
    ec_gather_desc g = {.src = &src, .n = 1, .row_bytes = 64, .src_dtype = EC_DTYPE_U8,
                        .dst_dtype = EC_DTYPE_U8, .dst = out, .device = 0,
                        .stream = &stream};
    setenv("EMBCACHE_EMU_ASYNC_US", "50000", 1);
    assert_int_equal(b->gather(&g), 0);
    unsetenv("EMBCACHE_EMU_ASYNC_US");
    assert_int_equal(atomic_load(&stream), 1);
    /* Waits for the queued gather, which read the 0x5a row. */
    assert_int_equal(b->stage_get(0, 64, (void **)&host, &dev), 0);
    assert_int_equal(atomic_load(&stream), 0);
    memset(host, 0, 64);
    for (int i = 0; i < 64; i++)
        assert_int_equal(out[i], 0x5a);
}

/* A slab a client opened stays readable after the daemon destroyed it. */
static void test_emu_slab_outlives_daemon(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_EMU);
    uint8_t data[4096];
    ec_slab slab;
    void *base = NULL;
    int fd;

    (void)state;
    setenv("EMBCACHE_EMU_GPUS", "1", 1);
    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 3);
    assert_int_equal(b->slab_create(0, 1 << 20, &slab), 0);
    assert_int_equal(b->slab_write(&slab, 8192, data, sizeof(data)), 0);
    fd = dup(slab.fd); /* what the client received over the socket */
    assert_int_equal(b->slab_open(0, slab.handle, fd, 1 << 20, &base), 0);
    close(fd);
    b->slab_destroy(&slab);
    assert_int_equal(slab.fd, -1);
    assert_memory_equal((uint8_t *)base + 8192, data, sizeof(data));
    b->slab_close(0, base, 1 << 20);
}

static void test_cuda_gather(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_CUDA);

    (void)state;
    assert_non_null(b);
    assert_true(b->device_count() > 0);
    gather_suite(b, -1); /* device outputs: test_gather_kernel and test_devtier cuda */
}

#ifdef EC_HAVE_CUDA
/* On a GPU: the attributes read, cudaStreamIsCapturing during a real
 * capture, a chunked registration, and a slab made with cuMemCreate,
 * imported from its descriptor, still readable after the maker freed it. */
static void test_cuda_conditions(void **state)
{
    const ec_backend *b = ec_backend_get(EC_BACKEND_CUDA);
    ec_device_caps caps;
    cudaStream_t st;
    cudaGraph_t graph;
    ec_slab slab;
    ec_host_map m;
    void *base = NULL, *host;
    uint8_t data[8192], back[8192];
    size_t len = 8u << 20;
    int fd;

    (void)state;
    assert_int_equal(b->device_caps(0, &caps), 0);
    printf("GPU 0: read-only registration %s, compute mode%s exclusive-process\n",
           caps.readonly_register ? "supported" : "NOT supported",
           caps.exclusive_process ? "" : " not");
    assert_int_equal(cudaSetDevice(0), cudaSuccess);
    assert_int_equal(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking), cudaSuccess);
    assert_int_equal(b->stream_capturing(0, st), 0);
    assert_int_equal(cudaStreamBeginCapture(st, cudaStreamCaptureModeRelaxed), cudaSuccess);
    assert_int_equal(b->stream_capturing(0, st), 1);
    assert_int_equal(cudaStreamEndCapture(st, &graph), cudaSuccess);
    if (graph)
        cudaGraphDestroy(graph);
    assert_int_equal(b->stream_capturing(0, st), 0);
    cudaStreamDestroy(st);

    /* Chunks of 1 MiB over 8 MiB, each chunk's address used for its rows. */
    host = aligned_alloc(4096, len);
    assert_non_null(host);
    for (size_t i = 0; i < len; i++)
        ((uint8_t *)host)[i] = (uint8_t)(i * 7 + i / 4096);
    setenv("EMBCACHE_REGISTER_MAX", "1048576", 1);
    assert_int_equal(b->host_register(host, len, caps.readonly_register, 0, &m), 0);
    unsetenv("EMBCACHE_REGISTER_MAX");
    assert_int_equal(m.n, 8);

    for (size_t i = 0; i < sizeof(data); i++)
        data[i] = (uint8_t)(i * 3 + 1);
    assert_int_equal(b->slab_create(0, 4u << 20, &slab), 0);
    assert_true(slab.fd >= 0);
    assert_int_equal(b->slab_write(&slab, 8192, data, sizeof(data)), 0);
    fd = dup(slab.fd);
    assert_int_equal(b->slab_open(0, slab.handle, fd, 4u << 20, &base), 0);
    close(fd);
    assert_int_equal(b->copy_to_host(back, (uint8_t *)base + 8192, sizeof(back), 0, NULL), 0);
    assert_memory_equal(back, data, sizeof(data));
    /* The kernel reads rows from every chunk into the slab (the daemon's
     * writable mapping), then the client's mapping reads them back. */
    {
        enum { N = 8 };
        const void *src[N];
        for (int k = 0; k < N; k++)
            src[k] = ec_host_map_addr(&m, (uint64_t)k * (1u << 20) + 4096 * k + 64, 256);
        ec_gather_desc g = {.src = src, .n = N, .row_bytes = 256, .src_dtype = EC_DTYPE_U8,
                            .dst_dtype = EC_DTYPE_U8, .dst = slab.base, .device = 0};
        assert_int_equal(b->gather(&g), 0);
        assert_int_equal(b->copy_to_host(back, base, N * 256, 0, NULL), 0);
        for (int k = 0; k < N; k++)
            assert_memory_equal(back + k * 256,
                                (uint8_t *)host + (size_t)k * (1u << 20) + 4096 * k + 64, 256);
        assert_int_equal(b->slab_write(&slab, 8192, data, sizeof(data)), 0);
    }
    b->slab_destroy(&slab);
    assert_int_equal(b->copy_to_host(back, (uint8_t *)base + 8192, sizeof(back), 0, NULL), 0);
    assert_memory_equal(back, data, sizeof(data));
    b->slab_close(0, base, 4u << 20);
    b->host_unregister(host);
    free(host);
}
#endif

/* `test_backend cuda` runs the CUDA cases alone and exits 77 (skipped) when
 * this build or this machine has no usable GPU. */
int main(int argc, char **argv)
{
    const struct CMUnitTest cpu[] = {
        cmocka_unit_test(test_cpu_gather),
        cmocka_unit_test(test_cpu_refuses_device_output),
        cmocka_unit_test(test_auto_selects_a_backend),
        cmocka_unit_test(test_emu),
        cmocka_unit_test(test_host_map_addr),
        cmocka_unit_test(test_emu_conditions),
        cmocka_unit_test(test_emu_stage_waits),
        cmocka_unit_test(test_emu_slab_outlives_daemon),
    };
    const struct CMUnitTest cuda[] = {
        cmocka_unit_test(test_cuda_gather),
#ifdef EC_HAVE_CUDA
        cmocka_unit_test(test_cuda_conditions),
#endif
    };

    if (argc > 1 && !strcmp(argv[1], "cuda")) {
        if (!ec_backend_get(EC_BACKEND_CUDA))
            return ect_gpu_unavailable(ec_last_error(), false);
        return cmocka_run_group_tests(cuda, NULL, NULL);
    }
    return cmocka_run_group_tests(cpu, NULL, NULL);
}
