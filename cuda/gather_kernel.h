/*
 * gather_kernel.h - the CUDA gather kernel's C-callable launcher
 * (cuda/gather.cu). Only backend_cuda.c calls it. Plain C types only, so
 * the header needs no CUDA header.
 *
 * One launch gathers n rows: output row (dst_rows ? dst_rows[i] : i) of dst
 * receives source row src[i] (row_elems elements of src_dtype), converted to
 * dst_dtype (equal dtypes: a byte copy; EC_DTYPE_F32 to EC_DTYPE_F16 or
 * EC_DTYPE_BF16: round to nearest even, as __float2half_rn and
 * __float2bfloat16_rn do). src[i] may point into device memory (the device
 * tier's slab) or into mapped pinned host memory (the host tier): any mix in
 * one launch. src and dst_rows must themselves be readable by the device
 * (device memory or mapped pinned host memory).
 *
 * Loads are coalesced: a warp (or more, for wide rows) per row, 16-byte
 * vector accesses when source, destination and row size allow, narrower
 * ones otherwise.
 *
 * Returns a cudaError_t value (0: cudaSuccess, the launch was queued on
 * stream); the caller turns it into an EC_E* code.
 */
#ifndef EC_CUDA_GATHER_KERNEL_H
#define EC_CUDA_GATHER_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Ids on the GPU (cuda/resolve.h): each row of a->ids found through the
 * device index, then the host index, copied (converted as above) to output
 * row i of a->dst, and its status written to a->status[i]. */
struct ec_resolve_args;
int ec_cuda_resolve_launch(const struct ec_resolve_args *a, int src_dtype, int dst_dtype,
                           void *stream);

int ec_cuda_gather_launch(const uint64_t *src, const size_t *dst_rows, size_t n,
                          size_t row_elems, int src_dtype, int dst_dtype, void *dst,
                          void *stream);

#ifdef __cplusplus
}
#endif
#endif
