/*
 * dtype.h - dtype names and sizes shared by the importers, the catalog,
 * the protocol and the tools; and the f32 to f16/bf16 conversions of a
 * gather with an output dtype (cuda/backend_cpu.c, per row; the tests and
 * the bench, as the reference for the GPU kernel's output).
 *
 * The conversions are bit-exact with CUDA's __float2half_rn and
 * __float2bfloat16_rn, so a row converted on the CPU and one converted by
 * the gather kernel compare equal byte for byte:
 *  - round to nearest, ties to even; subnormal f16 results are rounded the
 *    same way (no flush to zero);
 *  - a finite value whose rounding exceeds the largest finite value becomes
 *    infinity of its sign;
 *  - every NaN becomes the canonical quiet NaN 0x7fff (sign and payload
 *    dropped), as CUDA does; infinities and -0 keep their sign.
 * Pure functions of their arguments: any thread, any process. Pointers need
 * no alignment.
 */
#ifndef EC_COMMON_DTYPE_H
#define EC_COMMON_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "embcache.h"

/* Parse "f32", "float32", "bf16", ... Returns EC_DTYPE_INVALID if unknown. */
ec_dtype ec_dtype_from_name(const char *name);

/* 1 if d is one of the supported dtypes. */
int ec_dtype_valid(uint32_t d);

/* One value: f32 to the bits of an f16 / bf16, and back (exact; an f16 or
 * bf16 NaN keeps its sign and payload in the f32). */
uint16_t ec_f32_to_f16(float f);
uint16_t ec_f32_to_bf16(float f);
float ec_f16_to_f32(uint16_t h);
float ec_bf16_to_f32(uint16_t h);

/* n values from src (f32) to dst (f16 / bf16 bits); a row of a gather.
 * Vectorized where the machine allows, with the same results as the scalar
 * functions above whatever the floating-point environment. src and dst must
 * not overlap. */
void ec_f32_to_f16_n(void *dst, const void *src, size_t n);
void ec_f32_to_bf16_n(void *dst, const void *src, size_t n);

#endif
