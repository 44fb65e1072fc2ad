/*
 * gather.cu - the CUDA gather kernel and its launcher (see gather_kernel.h).
 * Called by backend_cuda.c on the client's thread; the kernel runs on the
 * caller's stream and reads rows wherever the device can reach them: the
 * device tier's slab or the mapped, pinned host segment, mixed in one
 * launch.
 *
 * Work split: a group of tpr lanes (a power of two) copies one row, tpr
 * chosen so each lane moves about one 16-byte unit: rows up to 512 bytes
 * get a part of a warp (several rows per warp, so a warp keeps several
 * rows' loads in flight: what hides the latency of reads over PCIe), wider
 * rows get several warps, up to a 1024-thread block for a 16 KiB row.
 * Blocks stride over the rows, so any n fits one launch.
 *
 * Alignment is decided per row on the device, since each source row has its
 * own address: a copy uses the widest unit (16, 8, 4, 2, 1 bytes) to which
 * source and destination can both be aligned at once, after a few head
 * bytes that get them there, and ends with the tail bytes; a conversion
 * reads float4 / float2 / float and writes 4 / 2 / 1 halves the same way.
 * All indexing is 64-bit: n reaches millions and rows 16 KiB.
 *
 * Conversions use __float2half_rn / __float2bfloat16_rn, which the CPU path
 * (common/dtype.c) reproduces bit for bit.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "cuda/gather_kernel.h"
#include "cuda/resolve.h"
#include "embcache.h"

namespace {

enum gather_mode { MODE_COPY, MODE_F16, MODE_BF16 };

struct gather_args {
    const uint64_t *src;     /* n source row addresses */
    const size_t *dst_rows;  /* output row of each, or NULL for 0..n-1 */
    long long n;
    long long row_bytes;     /* bytes of a source row (copy) */
    long long row_elems;     /* elements of a row (conversion) */
    long long out_row_bytes; /* distance between output rows */
    unsigned char *dst;
    int tpr_log2;            /* lanes per row, log2 */
};

template <typename T>
__device__ __forceinline__ void copy_units(const unsigned char *s, unsigned char *d,
                                           long long units, int lane, int tpr)
{
    const T *sv = reinterpret_cast<const T *>(s);
    T *dv = reinterpret_cast<T *>(d);
    for (long long k = lane; k < units; k += tpr)
        dv[k] = sv[k];
}

__device__ __forceinline__ void copy_row(const unsigned char *s, unsigned char *d,
                                         long long bytes, int lane, int tpr)
{
    const uintptr_t sa = reinterpret_cast<uintptr_t>(s), da = reinterpret_cast<uintptr_t>(d);
    const unsigned diff = (unsigned)((sa ^ da) & 15u);
    /* The widest unit both pointers reach together after the same head. */
    const int w = diff == 0 ? 16 : (diff & 7u) == 0 ? 8 : (diff & 3u) == 0 ? 4
                : (diff & 1u) == 0 ? 2 : 1;
    long long head = (long long)((w - (sa & (uintptr_t)(w - 1))) & (uintptr_t)(w - 1));
    if (head > bytes)
        head = bytes;
    const long long units = (bytes - head) / w, tail_off = head + units * w;

    for (long long k = lane; k < head; k += tpr)
        d[k] = s[k];
    switch (w) {
    case 16: copy_units<uint4>(s + head, d + head, units, lane, tpr); break;
    case 8: copy_units<uint2>(s + head, d + head, units, lane, tpr); break;
    case 4: copy_units<unsigned int>(s + head, d + head, units, lane, tpr); break;
    case 2: copy_units<unsigned short>(s + head, d + head, units, lane, tpr); break;
    default: copy_units<unsigned char>(s + head, d + head, units, lane, tpr); break;
    }
    for (long long k = tail_off + lane; k < bytes; k += tpr)
        d[k] = s[k];
}

template <int MODE>
__device__ __forceinline__ unsigned short cvt(float f)
{
    if (MODE == MODE_F16)
        return __half_as_ushort(__float2half_rn(f));
    return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}

template <int MODE>
__device__ __forceinline__ void convert_row(const unsigned char *s, unsigned char *d,
                                            long long elems, int lane, int tpr)
{
    const uintptr_t sa = reinterpret_cast<uintptr_t>(s), da = reinterpret_cast<uintptr_t>(d);

    if ((sa & 3u) || (da & 1u)) {
        /* Elements not on their natural alignment: assemble them bytewise
         * (little-endian, as the host wrote them). */
        for (long long k = lane; k < elems; k += tpr) {
            const unsigned char *p = s + 4 * k;
            unsigned int b = (unsigned int)p[0] | (unsigned int)p[1] << 8 |
                             (unsigned int)p[2] << 16 | (unsigned int)p[3] << 24;
            unsigned short h = cvt<MODE>(__uint_as_float(b));
            d[2 * k] = (unsigned char)(h & 0xffu);
            d[2 * k + 1] = (unsigned char)(h >> 8);
        }
        return;
    }
    const float *sf = reinterpret_cast<const float *>(s);
    unsigned short *dh = reinterpret_cast<unsigned short *>(d);
    /* Element k is at sa + 4k and da + 2k: a float4 load and an 8-byte store
     * line up when both are at the same element phase mod 4. */
    const unsigned ps = (unsigned)(sa >> 2) & 3u, pd = (unsigned)(da >> 1) & 3u;
    const int v = ps == pd ? 4 : ((ps ^ pd) & 1u) == 0 ? 2 : 1;
    long long head = (long long)((v - (ps & (unsigned)(v - 1))) & (unsigned)(v - 1));
    if (head > elems)
        head = elems;
    const long long units = (elems - head) / v, tail_off = head + units * v;

    for (long long k = lane; k < head; k += tpr)
        dh[k] = cvt<MODE>(sf[k]);
    if (v == 4) {
        const float4 *s4 = reinterpret_cast<const float4 *>(sf + head);
        uint2 *d4 = reinterpret_cast<uint2 *>(dh + head);
        for (long long k = lane; k < units; k += tpr) {
            const float4 f = s4[k];
            uint2 o;
            o.x = (unsigned int)cvt<MODE>(f.x) | (unsigned int)cvt<MODE>(f.y) << 16;
            o.y = (unsigned int)cvt<MODE>(f.z) | (unsigned int)cvt<MODE>(f.w) << 16;
            d4[k] = o;
        }
    } else if (v == 2) {
        const float2 *s2 = reinterpret_cast<const float2 *>(sf + head);
        unsigned int *d2 = reinterpret_cast<unsigned int *>(dh + head);
        for (long long k = lane; k < units; k += tpr) {
            const float2 f = s2[k];
            d2[k] = (unsigned int)cvt<MODE>(f.x) | (unsigned int)cvt<MODE>(f.y) << 16;
        }
    } else {
        for (long long k = lane; k < units; k += tpr)
            dh[head + k] = cvt<MODE>(sf[head + k]);
    }
    for (long long k = tail_off + lane; k < elems; k += tpr)
        dh[k] = cvt<MODE>(sf[k]);
}

template <int MODE>
__global__ void __launch_bounds__(1024) gather_kernel(const gather_args a)
{
    const int tpr = 1 << a.tpr_log2;
    const int lane = (int)(threadIdx.x & (unsigned)(tpr - 1));
    const long long rows_per_block = (long long)(blockDim.x >> a.tpr_log2);
    const long long stride = (long long)gridDim.x * rows_per_block;

    for (long long row = (long long)blockIdx.x * rows_per_block + (threadIdx.x >> a.tpr_log2);
         row < a.n; row += stride) {
        const unsigned char *s = reinterpret_cast<const unsigned char *>(a.src[row]);
        const long long out = a.dst_rows ? (long long)a.dst_rows[row] : row;
        unsigned char *d = a.dst + out * a.out_row_bytes;
        if (MODE == MODE_COPY)
            copy_row(s, d, a.row_bytes, lane, tpr);
        else
            convert_row<MODE>(s, d, a.row_elems, lane, tpr);
    }
}

/* Blocks of at least 256 threads; a launch never needs more blocks than
 * this to fill a GPU, and the kernel strides over the rest. */
#define EC_GATHER_BLOCK 256
#define EC_GATHER_MAX_BLOCKS (1u << 20)

/* Ids on the GPU: lane 0 of each group finds the group's row (cuda/resolve.h:
 * the device index, then the host index, through the mapped segment),
 * writes its status for the host and hands the answer to the group's other
 * lanes through shared memory; then the group copies it.
 *
 * One lookup per row, not one per lane: a row wider than 512 bytes has
 * lanes in several warps, which would read the entry, its sequence and the
 * slab's generation over PCIe at different moments. The daemon may rewrite
 * the entry in between, so some warps could find the row and others miss
 * it, and a row the host counts as copied would be copied in part. The
 * loop runs the same number of times in every thread of a block (by the
 * block's first row), so the barriers are reached by all. */
template <int MODE>
__global__ void __launch_bounds__(1024) resolve_kernel(const ec_resolve_args a, int tpr_log2)
{
    __shared__ uint64_t row_src[EC_GATHER_BLOCK];
    __shared__ unsigned row_st[EC_GATHER_BLOCK];
    const int tpr = 1 << tpr_log2;
    const int lane = (int)(threadIdx.x & (unsigned)(tpr - 1));
    const int local = (int)(threadIdx.x >> tpr_log2); /* < EC_GATHER_BLOCK: launch_shape */
    const long long rows_per_block = (long long)(blockDim.x >> tpr_log2);
    const long long stride = (long long)gridDim.x * rows_per_block;
    const long long n = (long long)a.n;

    for (long long first = (long long)blockIdx.x * rows_per_block; first < n; first += stride) {
        const long long row = first + local;
        if (lane == 0) {
            uint64_t src = 0;
            uint32_t part = 0;
            unsigned st = EC_RS_MISS;
            if (row < n) {
                st = ec_rs_find(&a, a.ids[row], &src, &part);
                a.status[row] = (unsigned char)st;
                a.parts[row] = part;
            }
            row_st[local] = st;
            row_src[local] = src;
        }
        __syncthreads();
        const unsigned st = row_st[local];
        const uint64_t src = row_src[local];
        __syncthreads(); /* read before the next turn writes */
        if (row >= n || (st != EC_RS_DEVICE && st != EC_RS_HOST))
            continue;
        const unsigned char *s = reinterpret_cast<const unsigned char *>(src);
        unsigned char *d = a.dst + row * (long long)a.out_row_bytes;
        if (MODE == MODE_COPY)
            copy_row(s, d, (long long)a.row_bytes, lane, tpr);
        else
            convert_row<MODE>(s, d, (long long)(a.row_bytes / 4), lane, tpr);
    }
}

} // namespace

/* The kernel mode for a conversion, or -1 when there is none. */
static int mode_of(int src_dtype, int dst_dtype)
{
    if (!ec_dtype_size((ec_dtype)src_dtype) || !ec_dtype_size((ec_dtype)dst_dtype))
        return -1;
    if (src_dtype == dst_dtype)
        return MODE_COPY;
    if (src_dtype == EC_DTYPE_F32 && dst_dtype == EC_DTYPE_F16)
        return MODE_F16;
    if (src_dtype == EC_DTYPE_F32 && dst_dtype == EC_DTYPE_BF16)
        return MODE_BF16;
    return -1;
}

/* How n rows of row_bytes are cut: lanes per row (log2), about one 16-byte
 * source unit per lane (1 lane for a 16-byte row, a whole block of 1024 for
 * a 16 KiB one; wider rows loop), threads per block and blocks. */
struct shape {
    int tpr_log2;
    unsigned threads;
    unsigned blocks;
};

static struct shape launch_shape(size_t n, size_t row_bytes)
{
    struct shape sh = {0, 0, 0};
    const size_t units = (row_bytes + 15) / 16;

    while (sh.tpr_log2 < 10 && ((size_t)1 << sh.tpr_log2) < units)
        sh.tpr_log2++;
    sh.threads = (1u << sh.tpr_log2) > EC_GATHER_BLOCK ? (1u << sh.tpr_log2) : EC_GATHER_BLOCK;
    const size_t rows_per_block = sh.threads >> sh.tpr_log2;
    size_t blocks = (n + rows_per_block - 1) / rows_per_block;
    sh.blocks = (unsigned)(blocks > EC_GATHER_MAX_BLOCKS ? EC_GATHER_MAX_BLOCKS : blocks);
    return sh;
}

extern "C" int ec_cuda_gather_launch(const uint64_t *src, const size_t *dst_rows, size_t n,
                                     size_t row_elems, int src_dtype, int dst_dtype,
                                     void *dst, void *stream)
{
    const size_t in_size = ec_dtype_size((ec_dtype)src_dtype);
    const int mode = mode_of(src_dtype, dst_dtype);
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    gather_args a;

    if (n == 0 || row_elems == 0)
        return 0; /* nothing to move: no launch */
    if (mode < 0 || !src || !dst)
        return (int)cudaErrorInvalidValue;
    a.src = src;
    a.dst_rows = dst_rows;
    a.n = (long long)n;
    a.row_elems = (long long)row_elems;
    a.row_bytes = (long long)(row_elems * in_size);
    a.out_row_bytes = (long long)(row_elems * ec_dtype_size((ec_dtype)dst_dtype));
    a.dst = static_cast<unsigned char *>(dst);
    const struct shape sh = launch_shape(n, row_elems * in_size);
    a.tpr_log2 = sh.tpr_log2;
    switch (mode) {
    case MODE_COPY: gather_kernel<MODE_COPY><<<sh.blocks, sh.threads, 0, st>>>(a); break;
    case MODE_F16: gather_kernel<MODE_F16><<<sh.blocks, sh.threads, 0, st>>>(a); break;
    default: gather_kernel<MODE_BF16><<<sh.blocks, sh.threads, 0, st>>>(a); break;
    }
    return (int)cudaGetLastError();
}

extern "C" int ec_cuda_resolve_launch(const ec_resolve_args *a, int src_dtype, int dst_dtype,
                                      void *stream)
{
    const size_t in_size = ec_dtype_size((ec_dtype)src_dtype);
    const int mode = mode_of(src_dtype, dst_dtype);
    cudaStream_t st = static_cast<cudaStream_t>(stream);

    if (a->n == 0)
        return 0;
    if (mode < 0 || !a->ids || !a->dst || !a->status || !a->parts || a->row_bytes == 0 ||
        a->row_bytes % in_size)
        return (int)cudaErrorInvalidValue;
    const struct shape sh = launch_shape(a->n, a->row_bytes);
    switch (mode) {
    case MODE_COPY:
        resolve_kernel<MODE_COPY><<<sh.blocks, sh.threads, 0, st>>>(*a, sh.tpr_log2);
        break;
    case MODE_F16:
        resolve_kernel<MODE_F16><<<sh.blocks, sh.threads, 0, st>>>(*a, sh.tpr_log2);
        break;
    default:
        resolve_kernel<MODE_BF16><<<sh.blocks, sh.threads, 0, st>>>(*a, sh.tpr_log2);
        break;
    }
    return (int)cudaGetLastError();
}
