/*
 * test_panel.c - the panel kernel of approximate search
 * (client/search_panel.c): every score it gives is the dot product of its
 * query and row, for every remainder of its tiles (queries not a multiple
 * of its tile, rows not a multiple of its panel width, any dim), and it
 * writes only the m scores of each query's row of C.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/search_impl.h"

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return (float)((double)(*s >> 40) / (double)(1ULL << 24) * 2.0 - 1.0);
}

/* Scores of nq x m x dim against a double-precision reference; C rows of
 * ldc = m + 3 floats, the 3 past m must keep their sentinel. */
static void check(size_t nq, size_t m, size_t dim, uint64_t seed)
{
    size_t ldc = m + 3;
    float *Q = malloc(nq * dim * sizeof(float)), *X = malloc(m * dim * sizeof(float));
    float *P = malloc(cl_panel_floats(m, dim) * sizeof(float));
    float *C = malloc(nq * ldc * sizeof(float));

    assert_non_null(Q);
    assert_non_null(X);
    assert_non_null(P);
    assert_non_null(C);
    for (size_t i = 0; i < nq * dim; i++)
        Q[i] = frand(&seed);
    for (size_t i = 0; i < m * dim; i++)
        X[i] = frand(&seed);
    for (size_t i = 0; i < nq * ldc; i++)
        C[i] = 12345.0f;
    cl_panel_pack(X, m, dim, P);
    cl_panel_dots(Q, nq, dim, P, m, C, ldc);
    for (size_t q = 0; q < nq; q++) {
        for (size_t r = 0; r < m; r++) {
            double want = 0, mag = 0;
            for (size_t j = 0; j < dim; j++) {
                want += (double)Q[q * dim + j] * X[r * dim + j];
                mag += fabs((double)Q[q * dim + j] * X[r * dim + j]);
            }
            if (fabs(C[q * ldc + r] - want) > 1e-5 * (1 + mag))
                fail_msg("%zu x %zu x %zu: query %zu row %zu scores %.9g, want %.9g", nq, m,
                         dim, q, r, (double)C[q * ldc + r], want);
        }
        for (size_t r = m; r < ldc; r++)
            if (C[q * ldc + r] != 12345.0f)
                fail_msg("%zu x %zu x %zu: query %zu: score %zu past the %zu rows was written",
                         nq, m, dim, q, r, m);
    }
    free(Q);
    free(X);
    free(P);
    free(C);
}

/* Every remainder of the query tile and the panel width. */
static void test_panel_shapes(void **state)
{
    static const size_t dims[] = {1, 3, 16, 64, 129};
    uint64_t seed = 1;

    (void)state;
    for (size_t d = 0; d < sizeof(dims) / sizeof(dims[0]); d++)
        for (size_t nq = 1; nq <= 31; nq += 1)
            for (size_t m = 1; m <= 35; m += 2)
                check(nq, m, dims[d], seed++);
}

/* A coarse step's shape: 256 queries against 2,048 centroids of 128. */
static void test_panel_large(void **state)
{
    (void)state;
    check(256, 2048, 128, 7);
    check(50, 1000, 768, 8);
}

/* The packed form: panels of EC_PANEL_W rows by column, zeros past m. */
static void test_panel_pack_layout(void **state)
{
    size_t m = EC_PANEL_W + 3, dim = 5;
    float X[(EC_PANEL_W + 3) * 5], P[2 * EC_PANEL_W * 5];

    (void)state;
    assert_int_equal(cl_panel_floats(m, dim), 2 * EC_PANEL_W * dim);
    assert_int_equal(cl_panel_floats(EC_PANEL_W, dim), EC_PANEL_W * dim);
    for (size_t i = 0; i < m * dim; i++)
        X[i] = (float)i + 1;
    memset(P, 0xff, sizeof(P));
    cl_panel_pack(X, m, dim, P);
    for (size_t p = 0; p < 2; p++)
        for (size_t j = 0; j < dim; j++)
            for (size_t i = 0; i < EC_PANEL_W; i++) {
                size_t r = p * EC_PANEL_W + i;
                float want = r < m ? X[r * dim + j] : 0.0f;
                assert_true(P[p * EC_PANEL_W * dim + j * EC_PANEL_W + i] == want);
            }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_panel_shapes),
        cmocka_unit_test(test_panel_large),
        cmocka_unit_test(test_panel_pack_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
