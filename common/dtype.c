/*
 * dtype.c - dtype names and sizes, and the f32 to f16/bf16 conversions
 * (see dtype.h and embcache.h).
 *
 * The scalar conversions work on the bits with integer arithmetic only, in
 * the steps of cuda_fp16.hpp's host path (__internal_float2half and the
 * rounding of __float2half): they do not depend on the rounding mode or
 * the denormal flags of the calling thread. The row conversions use SSE2
 * on x86-64, where the f16 one rounds with the FPU (the scaling trick of
 * Maratyszcza's FP16 library, its NaN changed to CUDA's): that is exact
 * under round-to-nearest whatever DAZ/FTZ say, so it is used only when the
 * thread's MXCSR rounds to nearest, and the integer path otherwise.
 */
#include "dtype.h"

#include <string.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

static const struct {
    const char *name;
    const char *alt;
    size_t size;
} dtypes[] = {
    [EC_DTYPE_INVALID] = {NULL, NULL, 0},
    [EC_DTYPE_F32] = {"f32", "float32", 4},
    [EC_DTYPE_F16] = {"f16", "float16", 2},
    [EC_DTYPE_BF16] = {"bf16", "bfloat16", 2},
    [EC_DTYPE_F64] = {"f64", "float64", 8},
    [EC_DTYPE_I8] = {"i8", "int8", 1},
    [EC_DTYPE_U8] = {"u8", "uint8", 1},
    [EC_DTYPE_I32] = {"i32", "int32", 4},
    [EC_DTYPE_I64] = {"i64", "int64", 8},
};

int ec_dtype_valid(uint32_t d)
{
    return d >= EC_DTYPE_F32 && d <= EC_DTYPE_I64;
}

const char *ec_dtype_name(ec_dtype d)
{
    return ec_dtype_valid((uint32_t)d) ? dtypes[d].name : NULL;
}

size_t ec_dtype_size(ec_dtype d)
{
    return ec_dtype_valid((uint32_t)d) ? dtypes[d].size : 0;
}

ec_dtype ec_dtype_from_name(const char *name)
{
    if (!name)
        return EC_DTYPE_INVALID;
    for (uint32_t d = EC_DTYPE_F32; d <= EC_DTYPE_I64; d++)
        if (!strcmp(name, dtypes[d].name) || !strcmp(name, dtypes[d].alt))
            return (ec_dtype)d;
    return EC_DTYPE_INVALID;
}

/* ---- f32 to f16 / bf16 ---- */

static inline uint32_t f32_bits(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    return x;
}

static inline float f32_from_bits(uint32_t x)
{
    float f;
    memcpy(&f, &x, sizeof(f));
    return f;
}

static inline uint16_t f16_from_bits(uint32_t x)
{
    uint32_t sign = (x >> 16) & 0x8000u, u = x & 0x7fffffffu, r, rem;

    if (u >= 0x7f800000u) /* Inf keeps its sign; NaN becomes CUDA's 0x7fff */
        return (uint16_t)(u == 0x7f800000u ? (sign | 0x7c00u) : 0x7fffu);
    if (u > 0x477fefffu) /* rounds past 65504: largest finite + a carry = Inf */
        r = sign | 0x7bffu, rem = 0x80000000u;
    else if (u >= 0x38800000u) /* a normal f16: rebias, keep 10 mantissa bits */
        r = sign | ((u - 0x38000000u) >> 13), rem = u << 19;
    else if (u < 0x33000001u) /* at most half the smallest subnormal: +-0 */
        r = sign, rem = u;
    else { /* a subnormal f16: the mantissa, implicit bit included, shifted */
        uint32_t shift = 0x7eu - (u >> 23), mant = (u & 0x7fffffu) | 0x800000u;
        r = sign | (mant >> shift);
        rem = mant << (32u - shift);
    }
    /* rem is what was shifted out, as a fraction of one unit in the last
     * place scaled to 2^32: above a half rounds up, exactly a half rounds to
     * even. A carry out of the mantissa bumps the exponent, as it should. */
    if (rem > 0x80000000u || (rem == 0x80000000u && (r & 1u)))
        r++;
    return (uint16_t)r;
}

static inline uint16_t bf16_from_bits(uint32_t x)
{
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return 0x7fffu;
    /* Adding 0x7fff plus the lowest kept bit rounds to nearest even; a carry
     * into the exponent is right, up to Inf for the largest values. */
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

uint16_t ec_f32_to_f16(float f)
{
    return f16_from_bits(f32_bits(f));
}

uint16_t ec_f32_to_bf16(float f)
{
    return bf16_from_bits(f32_bits(f));
}

float ec_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;

    if (e == 0x1fu) /* Inf or NaN: the payload moves to the top of f32's */
        return f32_from_bits(sign | 0x7f800000u | (m << 13));
    if (e == 0) {
        if (m == 0)
            return f32_from_bits(sign);
        /* Subnormal: normalize; every f16 subnormal is an f32 normal. */
        e = 1;
        while (!(m & 0x400u)) {
            m <<= 1;
            e--;
        }
        m &= 0x3ffu;
    }
    return f32_from_bits(sign | ((e + 112u) << 23) | (m << 13));
}

float ec_bf16_to_f32(uint16_t h)
{
    return f32_from_bits((uint32_t)h << 16);
}

#if defined(__SSE2__)
/* MXCSR's rounding control is round-to-nearest (the default, which every
 * framework keeps); the f16 vector path needs it. */
static inline int sse_rounds_to_nearest(void)
{
    return (_mm_getcsr() & 0x6000u) == 0;
}

/* 4 floats to 4 halfs, one per 32-bit lane. Scaling by 2^112 and back
 * turns values far too large for f16 into Inf; adding a power of two
 * (the bias, 2^(max(e, -14) + 11) relative to |f| scaled by 4) makes the FPU
 * round off exactly the bits an f16 of that exponent lacks, subnormals
 * included, and the f16's exponent and mantissa are then read off the sum
 * (a carry out of the mantissa lands in the exponent, up to Inf). Values
 * below the smallest f16 subnormal vanish in the sum, so DAZ/FTZ change
 * nothing. */
static inline __m128i f16x4_sse(__m128 f)
{
    const __m128i absmask = _mm_set1_epi32(0x7fffffff);
    __m128i w = _mm_castps_si128(f), absw = _mm_and_si128(w, absmask);
    __m128 base = _mm_mul_ps(_mm_mul_ps(_mm_castsi128_ps(absw), _mm_set1_ps(0x1.0p+112f)),
                             _mm_set1_ps(0x1.0p-110f));
    __m128i e = _mm_srli_epi32(absw, 23), lo = _mm_set1_epi32(0x71);
    __m128i small = _mm_cmplt_epi32(e, lo);
    e = _mm_or_si128(_mm_and_si128(small, lo), _mm_andnot_si128(small, e));
    __m128i bias = _mm_add_epi32(_mm_slli_epi32(e, 23), _mm_set1_epi32(0x07800000));
    __m128i bits = _mm_castps_si128(_mm_add_ps(_mm_castsi128_ps(bias), base));
    __m128i nonsign = _mm_add_epi32(_mm_and_si128(_mm_srli_epi32(bits, 13), _mm_set1_epi32(0x7c00)),
                                    _mm_and_si128(bits, _mm_set1_epi32(0x0fff)));
    __m128i sign = _mm_srli_epi32(_mm_andnot_si128(absmask, w), 16);
    __m128i nan = _mm_cmpgt_epi32(absw, _mm_set1_epi32(0x7f800000));
    __m128i r = _mm_or_si128(_mm_and_si128(nan, _mm_set1_epi32(0x7fff)),
                             _mm_andnot_si128(nan, _mm_or_si128(sign, nonsign)));
    /* Sign-extend the 16-bit results so the signed saturating pack keeps
     * them as they are. */
    return _mm_srai_epi32(_mm_slli_epi32(r, 16), 16);
}

static inline __m128i bf16x4_sse(__m128 f)
{
    __m128i w = _mm_castps_si128(f);
    __m128i absw = _mm_and_si128(w, _mm_set1_epi32(0x7fffffff));
    __m128i lsb = _mm_and_si128(_mm_srli_epi32(w, 16), _mm_set1_epi32(1));
    __m128i r = _mm_srli_epi32(_mm_add_epi32(_mm_add_epi32(w, _mm_set1_epi32(0x7fff)), lsb), 16);
    __m128i nan = _mm_cmpgt_epi32(absw, _mm_set1_epi32(0x7f800000));
    r = _mm_or_si128(_mm_and_si128(nan, _mm_set1_epi32(0x7fff)), _mm_andnot_si128(nan, r));
    return _mm_srai_epi32(_mm_slli_epi32(r, 16), 16);
}
#endif

void ec_f32_to_f16_n(void *dst, const void *src, size_t n)
{
    const unsigned char *s = src;
    unsigned char *d = dst;
    size_t i = 0;

#if defined(__SSE2__)
    if (sse_rounds_to_nearest())
        for (; i + 8 <= n; i += 8) {
            __m128i lo = f16x4_sse(_mm_loadu_ps((const float *)(const void *)(s + 4 * i)));
            __m128i hi = f16x4_sse(_mm_loadu_ps((const float *)(const void *)(s + 4 * i + 16)));
            _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), _mm_packs_epi32(lo, hi));
        }
#endif
    for (; i < n; i++) {
        uint32_t x;
        uint16_t h;
        memcpy(&x, s + 4 * i, 4);
        h = f16_from_bits(x);
        memcpy(d + 2 * i, &h, 2);
    }
}

void ec_f32_to_bf16_n(void *dst, const void *src, size_t n)
{
    const unsigned char *s = src;
    unsigned char *d = dst;
    size_t i = 0;

#if defined(__SSE2__)
    for (; i + 8 <= n; i += 8) { /* integer only: no rounding-mode check */
        __m128i lo = bf16x4_sse(_mm_loadu_ps((const float *)(const void *)(s + 4 * i)));
        __m128i hi = bf16x4_sse(_mm_loadu_ps((const float *)(const void *)(s + 4 * i + 16)));
        _mm_storeu_si128((__m128i *)(void *)(d + 2 * i), _mm_packs_epi32(lo, hi));
    }
#endif
    for (; i < n; i++) {
        uint32_t x;
        uint16_t h;
        memcpy(&x, s + 4 * i, 4);
        h = bf16_from_bits(x);
        memcpy(d + 2 * i, &h, 2);
    }
}

const char *ec_version(void)
{
    return EC_VERSION_STRING;
}
