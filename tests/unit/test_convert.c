/*
 * test_convert.c - common/dtype.c's f32 to f16/bf16 conversions and the CPU
 * gather that uses them (cuda/backend_cpu.c).
 *
 * The conversions are checked against a reference written differently: the
 * nearest representable value found by binary search over every finite
 * f16 (or between the two bf16 neighbours), distances compared in double,
 * ties to the even bit pattern. On top of that: every f16 bit pattern round
 * trips, every midpoint between two consecutive halves (and the floats just
 * either side of it) rounds as it should, and the row converters agree
 * with the scalar ones at every length and alignment and in every rounding
 * mode and denormal setting.
 */
#include <fenv.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include "common/dtype.h"
#include "common/err.h"
#include "cuda/backend.h"
#include "testutil.h"

static uint32_t bits_of(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof(x));
    return x;
}

static float float_of(uint32_t x)
{
    float f;
    memcpy(&f, &x, sizeof(f));
    return f;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd32(void)
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* ---- the reference ---- */

/* The value of a finite f16 from its fields, in double (exact). */
static double f16_value(uint16_t h)
{
    int e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e ? ldexp(1024 + m, e - 25) : ldexp(m, -24);
    return (h & 0x8000) ? -v : v;
}

/* Every non-negative finite f16, by bit pattern; increasing in value. */
static double f16_table[0x7c00];

static void build_f16_table(void)
{
    for (uint32_t h = 0; h < 0x7c00; h++)
        f16_table[h] = f16_value((uint16_t)h);
}

static uint16_t ref_f16(float f)
{
    uint16_t sign = (bits_of(f) >> 31) ? 0x8000 : 0;
    double a = fabs((double)f);
    size_t lo = 0, hi = 0x7bff;

    if (isnan(f))
        return 0x7fff;
    /* Past the largest half (65504) by half its spacing (16) or more: Inf.
     * Exactly 65520 is a tie between 0x7bff and the "next" pattern 0x7c00,
     * which is even. */
    if (a >= 65520.0)
        return sign | 0x7c00;
    if (a >= f16_table[0x7bff])
        return sign | 0x7bff;
    while (hi - lo > 1) { /* f16_table[lo] <= a < f16_table[hi] */
        size_t mid = (lo + hi) / 2;
        if (f16_table[mid] <= a)
            lo = mid;
        else
            hi = mid;
    }
    double dl = a - f16_table[lo], dh = f16_table[hi] - a;
    if (dl < dh)
        return sign | (uint16_t)lo;
    if (dh < dl)
        return sign | (uint16_t)hi;
    return sign | (uint16_t)((lo & 1) ? hi : lo);
}

static uint16_t ref_bf16(float f)
{
    uint32_t x = bits_of(f), lo = x & 0xffff0000u, hi = lo + 0x10000u;
    double a = (double)f, dl, dh;

    if (isnan(f))
        return 0x7fff;
    if (isinf(f))
        return (uint16_t)(x >> 16);
    /* lo and hi are the bf16 neighbours toward zero and away from it; hi may
     * be Inf, which is then the right answer past the halfway point. */
    dl = fabs(a - (double)float_of(lo));
    dh = isinf(float_of(hi)) ? ldexp(1.0, 128) - fabs(a) /* as if 2^128 */
                             : fabs((double)float_of(hi) - a);
    if (dl < dh)
        return (uint16_t)(lo >> 16);
    if (dh < dl)
        return (uint16_t)(hi >> 16);
    return (uint16_t)(((lo >> 16) & 1) ? hi >> 16 : lo >> 16);
}

/* ---- f16 ---- */

static void test_f16_specials(void **state)
{
    static const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x00000000u, 0x0000}, /* +0 */
        {0x80000000u, 0x8000}, /* -0 */
        {0x7f800000u, 0x7c00}, /* +Inf */
        {0xff800000u, 0xfc00}, /* -Inf */
        {0x7fc00000u, 0x7fff}, /* quiet NaN */
        {0xffc00000u, 0x7fff}, /* negative NaN: CUDA drops the sign */
        {0x7f800001u, 0x7fff}, /* signalling NaN comes out quiet */
        {0x7fffffffu, 0x7fff},
        {0x3f800000u, 0x3c00}, /* 1 */
        {0xc0000000u, 0xc000}, /* -2 */
        {0x477fe000u, 0x7bff}, /* 65504, the largest half */
        {0x477fefffu, 0x7bff}, /* just under 65520 */
        {0x477ff000u, 0x7c00}, /* 65520: the tie rounds to even, Inf */
        {0xc77ff000u, 0xfc00},
        {0x7f7fffffu, 0x7c00}, /* FLT_MAX */
        {0x38800000u, 0x0400}, /* 2^-14, the smallest normal half */
        {0x387fc000u, 0x03ff}, /* the largest subnormal half */
        {0x33800000u, 0x0001}, /* 2^-24, the smallest subnormal half */
        {0x33000000u, 0x0000}, /* 2^-25: a tie between 0 and 2^-24, even */
        {0x33000001u, 0x0001}, /* just above it */
        {0xb3000001u, 0x8001},
        {0x33c00000u, 0x0002}, /* 1.5 * 2^-24: tie, rounds to even 2 */
        {0x00000001u, 0x0000}, /* f32 subnormals vanish, keeping the sign */
        {0x80400000u, 0x8000},
        {0x3f801000u, 0x3c00}, /* 1 + 2^-11: tie, stays on even 0x3c00 */
        {0x3f803000u, 0x3c02}, /* 1 + 3 * 2^-11: tie, rounds up to even */
        {0x3f801001u, 0x3c01},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint16_t got = ec_f32_to_f16(float_of(cases[i].in));
        if (got != cases[i].out)
            fail_msg("f16(%08x) = %04x, expected %04x", cases[i].in, got, cases[i].out);
        assert_int_equal(ref_f16(float_of(cases[i].in)), cases[i].out);
    }
}

/* Every f16 pattern widens exactly and narrows back to itself; NaNs stay
 * NaN (CUDA's canonical one). */
static void test_f16_every_pattern_round_trips(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = ec_f16_to_f32((uint16_t)h);
        bool nan = (h & 0x7c00) == 0x7c00 && (h & 0x3ff);
        if (nan) {
            assert_true(isnan(f));
            assert_int_equal(ec_f32_to_f16(f), 0x7fff);
            continue;
        }
        if ((h & 0x7fff) == 0x7c00)
            assert_true(isinf(f) && (signbit(f) != 0) == ((h & 0x8000) != 0));
        else
            assert_true((double)f == f16_value((uint16_t)h));
        if (ec_f32_to_f16(f) != h)
            fail_msg("f16 %04x -> %a -> %04x", h, (double)f, ec_f32_to_f16(f));
    }
}

/* Between every two consecutive halves: the midpoint is a tie (to the even
 * pattern), the floats just below and above it go to either side. */
static void test_f16_midpoints(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x7bff; h++) {
        float a = (float)f16_table[h], b = (float)f16_table[h + 1];
        float m = (float)((f16_table[h] + f16_table[h + 1]) / 2); /* exact */
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        assert_true((double)m * 2 == f16_table[h] + f16_table[h + 1]);
        for (int s = 0; s < 2; s++) {
            float sg = s ? -1.0f : 1.0f;
            uint16_t sb = s ? 0x8000 : 0;
            assert_int_equal(ec_f32_to_f16(sg * a), sb | h);
            assert_int_equal(ec_f32_to_f16(sg * b), sb | (h + 1));
            assert_int_equal(ec_f32_to_f16(sg * m), sb | even);
            assert_int_equal(ec_f32_to_f16(sg * nextafterf(m, 0)), sb | h);
            assert_int_equal(ec_f32_to_f16(sg * nextafterf(m, INFINITY)), sb | (h + 1));
        }
    }
}

/* Random bit patterns (every exponent) and random values in the range of
 * halves, against the reference. */
static void test_f16_against_reference(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < (1u << 21); i++) {
        uint32_t x = rnd32();
        if (i & 1) /* exponents where halves live: 2^-26 .. 2^17 */
            x = (x & 0x807fffffu) | ((uint32_t)(101 + rnd32() % 44) << 23);
        uint16_t got = ec_f32_to_f16(float_of(x)), want = ref_f16(float_of(x));
        if (got != want)
            fail_msg("f16(%08x) = %04x, reference %04x", x, got, want);
    }
}

/* ---- bf16 ---- */

static void test_bf16_specials(void **state)
{
    static const struct {
        uint32_t in;
        uint16_t out;
    } cases[] = {
        {0x00000000u, 0x0000}, {0x80000000u, 0x8000}, {0x7f800000u, 0x7f80},
        {0xff800000u, 0xff80}, {0x7fc00000u, 0x7fff}, {0xffc00000u, 0x7fff},
        {0x7f800001u, 0x7fff}, {0xff800001u, 0x7fff},
        {0x3f808000u, 0x3f80}, /* tie, even stays */
        {0x3f818000u, 0x3f82}, /* tie, odd rounds up */
        {0x3f808001u, 0x3f81},
        {0x7f7fffffu, 0x7f80}, /* FLT_MAX rounds up to Inf */
        {0x7f7f7fffu, 0x7f7f},
        {0x7f7f8000u, 0x7f80}, /* tie at the top: odd 0x7f7f, rounds up to Inf */
        {0x00008000u, 0x0000}, /* subnormal tie, even */
        {0x00018000u, 0x0002},
        {0x80000001u, 0x8000},
    };

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint16_t got = ec_f32_to_bf16(float_of(cases[i].in));
        if (got != cases[i].out)
            fail_msg("bf16(%08x) = %04x, expected %04x", cases[i].in, got, cases[i].out);
        assert_int_equal(ref_bf16(float_of(cases[i].in)), cases[i].out);
    }
}

static void test_bf16_every_pattern(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = ec_bf16_to_f32((uint16_t)h);
        bool nan = (h & 0x7f80) == 0x7f80 && (h & 0x7f);
        assert_int_equal(bits_of(f), h << 16);
        assert_int_equal(ec_f32_to_bf16(f), nan ? 0x7fff : h);
        if (nan || (h & 0x7fff) >= 0x7f7f)
            continue;
        /* The midpoint to the next pattern, and either side of it. */
        uint32_t mid = (h << 16) | 0x8000u;
        uint16_t even = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        assert_int_equal(ec_f32_to_bf16(float_of(mid)), even);
        assert_int_equal(ec_f32_to_bf16(float_of(mid - 1)), h);
        assert_int_equal(ec_f32_to_bf16(float_of(mid + 1)), h + 1);
    }
}

static void test_bf16_against_reference(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < (1u << 21); i++) {
        uint32_t x = rnd32();
        if (i & 1) /* near the ties */
            x = (x & 0xffff0000u) | (0x8000u + (rnd32() % 5) - 2);
        uint16_t got = ec_f32_to_bf16(float_of(x)), want = ref_bf16(float_of(x));
        if (got != want)
            fail_msg("bf16(%08x) = %04x, reference %04x", x, got, want);
    }
}

/* ---- the row converters ---- */

static void check_rows_match_scalar(const char *what)
{
    enum { MAXN = 67 };
    unsigned char src[4 * MAXN + 8], dst[2 * MAXN + 8];

    for (size_t n = 0; n <= MAXN; n++)
        for (size_t so = 0; so < 4; so++)
            for (size_t d_off = 0; d_off < 2; d_off++) {
                for (size_t i = 0; i < sizeof(src); i++)
                    src[i] = (unsigned char)rnd32();
                for (int k = 0; k < 2; k++) {
                    memset(dst, 0xa5, sizeof(dst));
                    if (k == 0)
                        ec_f32_to_f16_n(dst + d_off, src + so, n);
                    else
                        ec_f32_to_bf16_n(dst + d_off, src + so, n);
                    for (size_t i = 0; i < n; i++) {
                        uint32_t x;
                        uint16_t got, want;
                        memcpy(&x, src + so + 4 * i, 4);
                        memcpy(&got, dst + d_off + 2 * i, 2);
                        want = k == 0 ? ec_f32_to_f16(float_of(x)) : ec_f32_to_bf16(float_of(x));
                        if (got != want)
                            fail_msg("%s: %s row of %zu, element %zu (%08x): %04x, scalar %04x",
                                     what, k == 0 ? "f16" : "bf16", n, i, x, got, want);
                    }
                    for (size_t i = 0; i < d_off; i++) /* nothing written before */
                        assert_int_equal(dst[i], 0xa5);
                    for (size_t i = d_off + 2 * n; i < sizeof(dst); i++) /* nor after */
                        assert_int_equal(dst[i], 0xa5);
                }
            }
}

/* A long row over every f32 exponent, with the edge mantissas of each. */
static void check_long_row(const char *what)
{
    enum { N = 256 * 64 };
    static uint32_t src[N];
    static uint16_t d16[N], db[N];
    static const uint32_t mant[] = {0, 1, 0xfff, 0x1000, 0x1001, 0x2000, 0x3000, 0x7fff,
                                    0x8000, 0x8001, 0x18000, 0x7fffff};

    for (size_t i = 0; i < N; i++) {
        uint32_t e = (uint32_t)(i / 64) & 0xff, m = (i % 64) < 12 ? mant[i % 64] : rnd32();
        src[i] = ((uint32_t)(i & 1) << 31) | e << 23 | (m & 0x7fffff);
    }
    ec_f32_to_f16_n(d16, src, N);
    ec_f32_to_bf16_n(db, src, N);
    for (size_t i = 0; i < N; i++) {
        if (d16[i] != ec_f32_to_f16(float_of(src[i])))
            fail_msg("%s: f16 of %08x: row %04x, scalar %04x", what, src[i], d16[i],
                     ec_f32_to_f16(float_of(src[i])));
        if (db[i] != ec_f32_to_bf16(float_of(src[i])))
            fail_msg("%s: bf16 of %08x: row %04x, scalar %04x", what, src[i], db[i],
                     ec_f32_to_bf16(float_of(src[i])));
    }
}

static void test_rows_match_scalar(void **state)
{
    (void)state;
    check_rows_match_scalar("default environment");
    check_long_row("default environment");
}

/* The row converters must not depend on the caller's floating-point
 * environment: another rounding mode, or flush-to-zero and
 * denormals-are-zero (which some frameworks turn on). */
static void test_rows_ignore_fp_environment(void **state)
{
    static const int modes[] = {FE_UPWARD, FE_DOWNWARD, FE_TOWARDZERO};
    int old = fegetround();

    (void)state;
    for (size_t i = 0; i < sizeof(modes) / sizeof(modes[0]); i++) {
        assert_int_equal(fesetround(modes[i]), 0);
        check_rows_match_scalar("another rounding mode");
        check_long_row("another rounding mode");
        fesetround(old);
    }
#if defined(__SSE2__)
    unsigned csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040u); /* FTZ | DAZ */
    check_rows_match_scalar("FTZ/DAZ");
    check_long_row("FTZ/DAZ");
    _mm_setcsr(csr);
#endif
}

/* ---- the CPU gather ---- */

static int done_calls;

static void on_done(void *arg)
{
    assert_ptr_equal(arg, &done_calls);
    done_calls++;
}

static void check_gather_convert(ec_dtype out, size_t dim, size_t n, bool scatter)
{
    size_t in_row = dim * 4, out_row = dim * 2, rows = n + 3;
    /* + 1: n may be 0, and malloc(0) may return NULL */
    unsigned char *src = malloc(n * in_row + 1), *dst = malloc(rows * out_row),
                  *want = malloc(rows * out_row);
    const void **ptrs = malloc(n * sizeof(*ptrs) + 1);
    size_t *dst_rows = malloc(n * sizeof(*dst_rows) + 1);

    assert_non_null(src);
    assert_non_null(dst);
    assert_non_null(want);
    assert_non_null(ptrs);
    assert_non_null(dst_rows);
    for (size_t i = 0; i < n * in_row; i++)
        src[i] = (unsigned char)rnd32();
    memset(dst, 0x5a, rows * out_row);
    memcpy(want, dst, rows * out_row);
    for (size_t i = 0; i < n; i++) {
        /* Output row i (or its scattered place) is source row (5i + 1) % n;
         * the scattered places leave three rows untouched. */
        ptrs[i] = src + ((i * 5 + 1) % n) * in_row;
        dst_rows[i] = scatter ? rows - 1 - (i * 2) % rows : i;
    }
    if (scatter) /* a permutation of n of the rows: 2i mod rows, rows odd */
        assert_true(rows % 2 == 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char *w = want + dst_rows[i] * out_row;
        if (out == EC_DTYPE_F16)
            for (size_t k = 0; k < dim; k++) {
                uint32_t x;
                uint16_t h;
                memcpy(&x, (const unsigned char *)ptrs[i] + 4 * k, 4);
                h = ref_f16(float_of(x));
                memcpy(w + 2 * k, &h, 2);
            }
        else
            for (size_t k = 0; k < dim; k++) {
                uint32_t x;
                uint16_t h;
                memcpy(&x, (const unsigned char *)ptrs[i] + 4 * k, 4);
                h = ref_bf16(float_of(x));
                memcpy(w + 2 * k, &h, 2);
            }
    }
    ec_gather_desc g = {.src = ptrs, .n = n, .row_bytes = in_row, .src_dtype = EC_DTYPE_F32,
                        .dst_dtype = out, .dst = dst, .dst_rows = scatter ? dst_rows : NULL,
                        .device = -1, .done = on_done, .done_arg = &done_calls};
    done_calls = 0;
    assert_int_equal(ec_cpu_gather(&g), 0);
    assert_int_equal(done_calls, 1);
    assert_memory_equal(dst, want, rows * out_row);
    free(src);
    free(dst);
    free(want);
    free(ptrs);
    free(dst_rows);
}

static void test_cpu_gather_converts(void **state)
{
    static const size_t dims[] = {1, 3, 7, 8, 9, 64, 100, 1000, 4096};

    (void)state;
    for (size_t i = 0; i < sizeof(dims) / sizeof(dims[0]); i++)
        for (int scatter = 0; scatter < 2; scatter++) {
            /* n even so rows = n + 3 is odd (the scatter is a permutation) */
            check_gather_convert(EC_DTYPE_F16, dims[i], 40, scatter);
            check_gather_convert(EC_DTYPE_BF16, dims[i], 40, scatter);
        }
    check_gather_convert(EC_DTYPE_F16, 128, 0, false); /* nothing to do, still done */
}

/* Equal dtypes other than the default are a byte copy, NaNs and all. */
static void test_cpu_gather_same_dtype_copies_bytes(void **state)
{
    uint16_t a[5] = {0x7c01, 0xfe00, 0x0001, 0x8000, 0x3c00}, b[3] = {1, 2, 3}, out[8];
    const void *p[2] = {b, a};
    size_t rows[2] = {1, 0};
    ec_gather_desc g = {.src = p, .n = 2, .row_bytes = 6, .src_dtype = EC_DTYPE_F16,
                        .dst_dtype = EC_DTYPE_F16, .dst = out, .dst_rows = rows, .device = -1,
                        .done = on_done, .done_arg = &done_calls};

    (void)state;
    memset(out, 0, sizeof(out));
    done_calls = 0;
    assert_int_equal(ec_cpu_gather(&g), 0);
    assert_int_equal(done_calls, 1);
    assert_memory_equal(out, a, 6);
    assert_memory_equal(out + 3, b, 6);
    assert_int_equal(out[6], 0);
}

/* Rows that follow each other in source and output are copied as one run;
 * a run must end where either stops following: a source row that is not
 * the next one (a gap, a step back, the same row again) or an output row
 * that is not the next one. Checked against a copy row by row. */
static void test_cpu_gather_runs(void **state)
{
    enum { ROWS = 64, RB = 12, N = 40 };
    static const size_t pick[N] = {0,  1,  2,  3,  10, 11, 12, 12, 13, 9,  8,  20, 21, 22,
                                   30, 31, 32, 33, 34, 35, 40, 41, 50, 52, 53, 54, 60, 61,
                                   62, 63, 5,  6,  7,  44, 45, 46, 47, 48, 49, 50};
    uint8_t src[ROWS * RB], want[2 * N * RB], got[2 * N * RB];
    const void *p[N];
    size_t rows[N];

    (void)state;
    for (size_t i = 0; i < sizeof(src); i++)
        src[i] = (uint8_t)(i * 7 + 3);
    for (size_t i = 0; i < N; i++) {
        p[i] = src + pick[i] * RB;
        /* output rows: runs broken by gaps, steps back and a repeat */
        rows[i] = i < 10 ? i : i < 20 ? 2 * i : i < 30 ? 79 - i : i == 30 ? 79 - 29 : i + 40;
    }
    for (int scatter = 0; scatter < 2; scatter++) {
        ec_gather_desc g = {.src = p, .n = N, .row_bytes = RB, .src_dtype = EC_DTYPE_I8,
                            .dst_dtype = EC_DTYPE_I8, .dst = got,
                            .dst_rows = scatter ? rows : NULL, .device = -1};
        memset(got, 0xee, sizeof(got));
        memset(want, 0xee, sizeof(want));
        for (size_t i = 0; i < N; i++)
            memcpy(want + (scatter ? rows[i] : i) * RB, p[i], RB);
        assert_int_equal(ec_cpu_gather(&g), 0);
        assert_memory_equal(got, want, sizeof(got));
    }
}

static void test_cpu_gather_refuses_other_conversions(void **state)
{
    static const ec_dtype pairs[][2] = {
        {EC_DTYPE_F16, EC_DTYPE_F32}, {EC_DTYPE_BF16, EC_DTYPE_F16},
        {EC_DTYPE_F32, EC_DTYPE_F64}, {EC_DTYPE_I32, EC_DTYPE_F16},
        {EC_DTYPE_F32, EC_DTYPE_I8},  {EC_DTYPE_F64, EC_DTYPE_F16},
        {EC_DTYPE_F32, EC_DTYPE_INVALID},
    };
    float src[4] = {1, 2, 3, 4};
    unsigned char out[16];
    const void *p = src;

    (void)state;
    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        ec_gather_desc g = {.src = &p, .n = 1, .row_bytes = sizeof(src),
                            .src_dtype = pairs[i][0], .dst_dtype = pairs[i][1], .dst = out,
                            .device = -1, .done = on_done, .done_arg = &done_calls};
        memset(out, 0x77, sizeof(out));
        done_calls = 0;
        assert_int_equal(ec_cpu_gather(&g), EC_EDTYPE);
        assert_int_equal(done_calls, 0);
        for (size_t k = 0; k < sizeof(out); k++)
            assert_int_equal(out[k], 0x77);
        /* The message names both dtypes. */
        assert_non_null(strstr(ec_last_error(), ec_dtype_name(pairs[i][0])));
        if (pairs[i][1] != EC_DTYPE_INVALID)
            assert_non_null(strstr(ec_last_error(), ec_dtype_name(pairs[i][1])));
    }
}

static void test_cpu_gather_refuses_device_output(void **state)
{
    float src[2] = {1, 2};
    uint16_t out[2] = {0, 0};
    const void *p = src;
    ec_gather_desc g = {.src = &p, .n = 1, .row_bytes = sizeof(src), .src_dtype = EC_DTYPE_F32,
                        .dst_dtype = EC_DTYPE_F16, .dst = out, .device = 3, .done = on_done,
                        .done_arg = &done_calls};

    (void)state;
    done_calls = 0;
    assert_int_equal(ec_cpu_gather(&g), EC_EINVAL);
    assert_int_equal(done_calls, 0);
    assert_int_equal(out[0], 0);
    assert_non_null(strstr(ec_last_error(), "GPU 3"));
}

static void test_cpu_gather_refuses_partial_floats(void **state)
{
    float src[2] = {1, 2};
    uint16_t out[2] = {0, 0};
    const void *p = src;
    ec_gather_desc g = {.src = &p, .n = 1, .row_bytes = 6, .src_dtype = EC_DTYPE_F32,
                        .dst_dtype = EC_DTYPE_BF16, .dst = out, .device = -1};

    (void)state;
    assert_int_equal(ec_cpu_gather(&g), EC_EINVAL);
    assert_non_null(strstr(ec_last_error(), "6 bytes"));
    assert_int_equal(out[0], 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_f16_specials),
        cmocka_unit_test(test_f16_every_pattern_round_trips),
        cmocka_unit_test(test_f16_midpoints),
        cmocka_unit_test(test_f16_against_reference),
        cmocka_unit_test(test_bf16_specials),
        cmocka_unit_test(test_bf16_every_pattern),
        cmocka_unit_test(test_bf16_against_reference),
        cmocka_unit_test(test_rows_match_scalar),
        cmocka_unit_test(test_rows_ignore_fp_environment),
        cmocka_unit_test(test_cpu_gather_converts),
        cmocka_unit_test(test_cpu_gather_same_dtype_copies_bytes),
        cmocka_unit_test(test_cpu_gather_runs),
        cmocka_unit_test(test_cpu_gather_refuses_other_conversions),
        cmocka_unit_test(test_cpu_gather_refuses_device_output),
        cmocka_unit_test(test_cpu_gather_refuses_partial_floats),
    };

    build_f16_table();
    return cmocka_run_group_tests(tests, NULL, NULL);
}
