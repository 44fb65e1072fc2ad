/*
 * test_gather_kernel.c - cuda/gather.cu on a GPU: ec_cuda_gather_launch()'s
 * output against ec_cpu_gather()'s, byte for byte, over the whole output
 * buffer (so bytes between and around the rows must stay untouched):
 *  - every dtype as a byte copy, and f32 to f16 / bf16 (with NaNs, Infs,
 *    subnormals and rounding ties in the data);
 *  - row widths from 1 to 4096 elements, odd ones included;
 *  - source rows 16-aligned, 4-aligned, and at any byte; the output at an
 *    odd offset too;
 *  - in one launch, rows in device memory and rows in mapped pinned host
 *    memory (the device and host tiers), interleaved;
 *  - output rows in order and scattered (dst_rows), on the default stream
 *    and on a stream of our own;
 *  - n = 0 (no launch, nothing written), 1 and 65536.
 * Without a CUDA driver or a GPU it prints "skipped: <why>" and exits 77.
 */
#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dtype.h"
#include "common/err.h"
#include "cuda/backend.h"
#include "cuda/gather_kernel.h"
#include "testutil.h"

#define POOL_BYTES (64u << 20) /* each: device pool and mapped host pool */

#define CU(call)                                                                              \
    do {                                                                                      \
        cudaError_t e_ = (call);                                                              \
        if (e_ != cudaSuccess)                                                                \
            fail_msg("%s: %s (%s)", #call, cudaGetErrorName(e_), cudaGetErrorString(e_));     \
    } while (0)

/* The sources: the same bytes seen by the CPU (host addresses) and by the
 * kernel (device addresses). */
static struct {
    unsigned char *dev;        /* device pool */
    unsigned char *dev_mirror; /* its contents, on the host */
    unsigned char *host;       /* mapped pinned host pool */
    unsigned char *host_dev;   /* the same, as the device addresses it */
    cudaStream_t stream;
} P;

static uint64_t rng = 0x2545f4914f6cdd1dull;

static uint64_t rnd(void)
{
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Pool words: random bits (NaNs and Infs among them), f16-range values
 * with the rounding edges in their low bits, and the special values. */
static void fill_pool(unsigned char *p, size_t bytes)
{
    static const uint32_t special[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,
                                       0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x477ff000u,
                                       0x477fefffu, 0x33000000u, 0x33000001u, 0x387fc000u,
                                       0x00000001u, 0x7f7fffffu, 0x3f808000u, 0x3f818000u};
    static const uint32_t edge[] = {0x0000u, 0x0fffu, 0x1000u, 0x1001u, 0x3000u,
                                    0x7fffu, 0x8000u, 0x8001u, 0x18000u};

    for (size_t i = 0; i + 4 <= bytes; i += 4) {
        uint64_t r = rnd();
        uint32_t w = (uint32_t)r;
        switch ((r >> 32) & 7) {
        case 0: case 1: case 2: case 3:
            break;
        case 4: case 5: /* exponents 2^-26 .. 2^17, a rounding edge below */
            w = (w & 0x80000000u) | (uint32_t)(101 + (r >> 40) % 44) << 23 |
                ((w & 0x7fffffu) & ~0x1ffffu) | edge[(r >> 48) % 9];
            break;
        case 6:
            w = special[(r >> 40) % 16];
            break;
        default: /* small ints for the integer dtypes */
            w &= 0x000003ffu;
            break;
        }
        memcpy(p + i, &w, 4);
    }
}

static int setup(void **state)
{
    (void)state;
    memset(&P, 0, sizeof(P));
    if (cudaSetDevice(0) != cudaSuccess || cudaMalloc((void **)&P.dev, POOL_BYTES) ||
        cudaHostAlloc((void **)&P.host, POOL_BYTES, cudaHostAllocMapped) ||
        cudaHostGetDevicePointer((void **)&P.host_dev, P.host, 0) ||
        cudaStreamCreateWithFlags(&P.stream, cudaStreamNonBlocking))
        return -1;
    P.dev_mirror = malloc(POOL_BYTES);
    if (!P.dev_mirror)
        return -1;
    fill_pool(P.dev_mirror, POOL_BYTES);
    fill_pool(P.host, POOL_BYTES);
    return cudaMemcpy(P.dev, P.dev_mirror, POOL_BYTES, cudaMemcpyHostToDevice) ? -1 : 0;
}

static int teardown(void **state)
{
    (void)state;
    cudaStreamDestroy(P.stream);
    cudaFree(P.dev);
    cudaFreeHost(P.host);
    free(P.dev_mirror);
    return 0;
}

enum align { ALIGN16, ALIGN4, ALIGN_ANY };

struct gcase {
    ec_dtype sd, dd;
    size_t elems, n;
    enum align align;
    bool scatter;
    bool own_stream;
    size_t dst_off;   /* output buffer offset in bytes */
};

/* Place n rows of row_bytes alternately (in runs) in the two pools, each at
 * the alignment asked for. */
static void place_rows(const struct gcase *c, size_t row_bytes, const void **host_ptrs,
                       uint64_t *dev_ptrs)
{
    size_t pos[2] = {(size_t)(rnd() % 64), (size_t)(rnd() % 64)};

    for (size_t i = 0; i < c->n; i++) {
        int tier = (int)((i / (1 + i % 3)) & 1); /* runs of both tiers */
        size_t off = (pos[tier] + 15) & ~(size_t)15;
        if (c->align == ALIGN4)
            off += 4 * (rnd() % 4);
        else if (c->align == ALIGN_ANY)
            off += rnd() % 16;
        if (off + row_bytes > POOL_BYTES) { /* wrap: rows may repeat bytes */
            off = c->align == ALIGN_ANY ? rnd() % 16 : 0;
            pos[tier] = 0;
        }
        assert_true(off + row_bytes <= POOL_BYTES);
        if (tier == 0) {
            host_ptrs[i] = P.dev_mirror + off;
            dev_ptrs[i] = (uint64_t)(uintptr_t)(P.dev + off);
        } else {
            host_ptrs[i] = P.host + off;
            dev_ptrs[i] = (uint64_t)(uintptr_t)(P.host_dev + off);
        }
        pos[tier] = off + row_bytes;
    }
}

static void run_case(const struct gcase *c)
{
    size_t isz = ec_dtype_size(c->sd), osz = ec_dtype_size(c->dd);
    size_t row_bytes = c->elems * isz, out_row = c->elems * osz;
    size_t out_rows = c->scatter ? (c->n | 1) + 2 : c->n; /* odd: 2i mod it is a permutation */
    size_t buf_bytes = out_rows * out_row + c->dst_off + 64;
    const void **host_ptrs = malloc(c->n * sizeof(*host_ptrs) + 1);
    uint64_t *dev_ptrs = malloc(c->n * sizeof(*dev_ptrs) + 1), *d_ptrs = NULL;
    size_t *rows = malloc(c->n * sizeof(*rows) + 1), *d_rows = NULL;
    unsigned char *want = malloc(buf_bytes), *got = malloc(buf_bytes), *d_out = NULL;
    int rc;

    assert_true(host_ptrs && dev_ptrs && rows && want && got);
    place_rows(c, row_bytes, host_ptrs, dev_ptrs);
    for (size_t i = 0; i < c->n; i++)
        rows[i] = c->scatter ? out_rows - 1 - (2 * i) % out_rows : i;
    CU(cudaMalloc((void **)&d_out, buf_bytes));
    CU(cudaMalloc((void **)&d_ptrs, c->n * sizeof(*d_ptrs) + 8));
    CU(cudaMalloc((void **)&d_rows, c->n * sizeof(*d_rows) + 8));
    CU(cudaMemcpy(d_ptrs, dev_ptrs, c->n * sizeof(*d_ptrs), cudaMemcpyHostToDevice));
    CU(cudaMemcpy(d_rows, rows, c->n * sizeof(*d_rows), cudaMemcpyHostToDevice));
    CU(cudaMemset(d_out, 0xa5, buf_bytes));
    /* The copies above may still be in flight on the legacy stream, which
     * our non-blocking stream does not wait for. */
    CU(cudaDeviceSynchronize());
    memset(want, 0xa5, buf_bytes);

    ec_gather_desc g = {.src = host_ptrs, .n = c->n, .row_bytes = row_bytes,
                        .src_dtype = c->sd, .dst_dtype = c->dd, .dst = want + c->dst_off,
                        .dst_rows = c->scatter ? rows : NULL, .device = -1};
    assert_int_equal(ec_cpu_gather(&g), 0);

    cudaStream_t st = c->own_stream ? P.stream : NULL;
    rc = ec_cuda_gather_launch(d_ptrs, c->scatter ? d_rows : NULL, c->n, c->elems, (int)c->sd,
                               (int)c->dd, d_out + c->dst_off, st);
    if (rc == cudaErrorNoKernelImageForDevice || rc == cudaErrorInvalidDeviceFunction)
        fail_msg("the gather kernel has no code for this GPU (%s): configure with "
                 "-DEMBCACHE_CUDA_ARCHS=<its compute capability, e.g. 89>",
                 cudaGetErrorString((cudaError_t)rc));
    if (rc)
        fail_msg("launch: %s", cudaGetErrorString((cudaError_t)rc));
    CU(cudaStreamSynchronize(st));
    CU(cudaMemcpy(got, d_out, buf_bytes, cudaMemcpyDeviceToHost));
    if (memcmp(got, want, buf_bytes)) {
        size_t b = 0;
        while (got[b] == want[b])
            b++;
        fail_msg("%s -> %s, %zu elems, n %zu, align %d, scatter %d, dst_off %zu: byte %zu "
                 "(output row %zu, byte %zu of it) is %02x, the CPU wrote %02x",
                 ec_dtype_name(c->sd), ec_dtype_name(c->dd), c->elems, c->n, (int)c->align,
                 (int)c->scatter, c->dst_off, b, b < c->dst_off ? 0 : (b - c->dst_off) / out_row,
                 b < c->dst_off ? 0 : (b - c->dst_off) % out_row, got[b], want[b]);
    }
    cudaFree(d_out);
    cudaFree(d_ptrs);
    cudaFree(d_rows);
    free(host_ptrs);
    free(dev_ptrs);
    free(rows);
    free(want);
    free(got);
}

static const size_t widths[] = {1,   2,   3,   4,    5,    7,    8,    9,    15,   16,
                                17,  31,  32,  33,   63,   64,   65,   100,  127,  128,
                                129, 255, 256, 257,  500,  511,  512,  513,  1000, 1023,
                                1024, 1025, 2047, 2048, 2049, 3000, 4095, 4096};
#define NWIDTHS (sizeof(widths) / sizeof(widths[0]))

static void sweep(ec_dtype sd, ec_dtype dd)
{
    for (size_t w = 0; w < NWIDTHS; w++)
        for (int a = ALIGN16; a <= ALIGN_ANY; a++)
            for (int s = 0; s < 2; s++) {
                struct gcase c = {.sd = sd, .dd = dd, .elems = widths[w], .n = 48,
                                  .align = (enum align)a, .scatter = s,
                                  .own_stream = (w + (size_t)a) & 1,
                                  /* the output misaligned too, now and then */
                                  .dst_off = a == ALIGN_ANY ? 1 + w % 15 : a == ALIGN4 ? 4 : 0};
                run_case(&c);
            }
}

static void test_every_dtype_copies(void **state)
{
    (void)state;
    for (int d = EC_DTYPE_F32; d <= EC_DTYPE_I64; d++)
        sweep((ec_dtype)d, (ec_dtype)d);
}

static void test_f32_to_f16(void **state)
{
    (void)state;
    sweep(EC_DTYPE_F32, EC_DTYPE_F16);
}

static void test_f32_to_bf16(void **state)
{
    (void)state;
    sweep(EC_DTYPE_F32, EC_DTYPE_BF16);
}

static void test_batch_sizes(void **state)
{
    static const struct gcase cases[] = {
        {EC_DTYPE_F32, EC_DTYPE_F32, 64, 1, ALIGN16, false, false, 0},
        {EC_DTYPE_F32, EC_DTYPE_F16, 4096, 1, ALIGN4, true, true, 2},
        {EC_DTYPE_F16, EC_DTYPE_F16, 7, 1, ALIGN_ANY, false, false, 1},
        {EC_DTYPE_F32, EC_DTYPE_F32, 64, 65536, ALIGN16, false, true, 0},
        {EC_DTYPE_F32, EC_DTYPE_F16, 64, 65536, ALIGN16, true, false, 0},
        {EC_DTYPE_F32, EC_DTYPE_BF16, 100, 65536, ALIGN4, false, true, 0},
        {EC_DTYPE_F16, EC_DTYPE_F16, 128, 65536, ALIGN_ANY, true, true, 3},
        {EC_DTYPE_U8, EC_DTYPE_U8, 3, 65536, ALIGN_ANY, true, false, 1},
        {EC_DTYPE_F32, EC_DTYPE_F16, 4096, 2048, ALIGN16, true, true, 0},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        run_case(&cases[i]);
}

/* n = 0 launches nothing: even NULL arrays are fine, and the output is
 * left as it was. */
static void test_zero_rows(void **state)
{
    unsigned char *d_out, got[64];

    (void)state;
    CU(cudaMalloc((void **)&d_out, sizeof(got)));
    CU(cudaMemset(d_out, 0x3c, sizeof(got)));
    assert_int_equal(ec_cuda_gather_launch(NULL, NULL, 0, 64, EC_DTYPE_F32, EC_DTYPE_F16, d_out,
                                           NULL), 0);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(got, d_out, sizeof(got), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < sizeof(got); i++)
        assert_int_equal(got[i], 0x3c);
    cudaFree(d_out);
}

/* A pair the kernel does not convert is refused before any launch. */
static void test_refuses_other_conversions(void **state)
{
    static const int pairs[][2] = {{EC_DTYPE_F16, EC_DTYPE_F32}, {EC_DTYPE_F32, EC_DTYPE_I8},
                                   {EC_DTYPE_BF16, EC_DTYPE_F16}, {EC_DTYPE_F32, 0},
                                   {99, 99}};
    uint64_t *d_ptrs;
    unsigned char *d_out, got[16];
    uint64_t p;

    (void)state;
    CU(cudaMalloc((void **)&d_ptrs, sizeof(p)));
    CU(cudaMalloc((void **)&d_out, sizeof(got)));
    p = (uint64_t)(uintptr_t)P.dev;
    CU(cudaMemcpy(d_ptrs, &p, sizeof(p), cudaMemcpyHostToDevice));
    CU(cudaMemset(d_out, 0x11, sizeof(got)));
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++)
        assert_int_equal(ec_cuda_gather_launch(d_ptrs, NULL, 1, 2, pairs[i][0], pairs[i][1],
                                               d_out, NULL),
                         cudaErrorInvalidValue);
    CU(cudaDeviceSynchronize());
    CU(cudaMemcpy(got, d_out, sizeof(got), cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < sizeof(got); i++)
        assert_int_equal(got[i], 0x11);
    cudaFree(d_ptrs);
    cudaFree(d_out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_dtype_copies),
        cmocka_unit_test(test_f32_to_f16),
        cmocka_unit_test(test_f32_to_bf16),
        cmocka_unit_test(test_batch_sizes),
        cmocka_unit_test(test_zero_rows),
        cmocka_unit_test(test_refuses_other_conversions),
    };
    int n = 0, map = 0;
    cudaError_t e = cudaGetDeviceCount(&n);

    if (e != cudaSuccess) {
        char why[256];
        snprintf(why, sizeof(why), "CUDA is not usable: %s", cudaGetErrorString(e));
        return ect_gpu_unavailable(why, false);
    }
    if (n == 0)
        return ect_gpu_unavailable("CUDA found no GPU", false);
    if (cudaDeviceGetAttribute(&map, cudaDevAttrCanMapHostMemory, 0) != cudaSuccess || !map)
        return ect_gpu_unavailable("GPU 0 cannot map host memory, which the host tier needs",
                                   true);
    return cmocka_run_group_tests(tests, setup, teardown);
}
