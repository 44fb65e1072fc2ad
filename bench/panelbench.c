/*
 * panelbench.c - the kernels of approximate search on one thread: the
 * panel kernel (client/search_panel.c, packed rows; with and without the
 * packing), OpenBLAS's cblas_sgemm, and exact search's vector kernel
 * (cl_search_dots), on the shapes the search gives them: the coarse step
 * (queries x centroids) and a list probed by a few to many queries.
 *
 *     embcache-panelbench [--repeats R] [--seconds S]
 *
 * Runs each kernel for about --seconds per repeat and prints GFLOP/s (2
 * flops per multiply-add) per shape: the median and the range over the
 * repeats, kernels interleaved within each repeat. Set
 * OPENBLAS_NUM_THREADS=1 to compare one thread with one thread (the search
 * runs the panel kernel on its own threads). Also checks that every
 * kernel's scores agree (exit 1 if not).
 */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "client/search_impl.h"

enum { K_PANEL, K_PACKED, K_SGEMM, K_DOTS, NK };
static const char *const KNAME[NK] = {"panel", "pack+panel", "sgemm", "dots"};

struct shape {
    size_t nq, m, dim;
    const char *what;
};

static const struct shape SHAPES[] = {
    {256, 2048, 128, "coarse: 256 queries, 2048 centroids"},
    {1, 2048, 128, "coarse: 1 query, 2048 centroids"},
    {2048, 4096, 64, "coarse: 2048 queries, 4096 centroids"},
    {16, 512, 128, "list of 512 rows, 16 queries"},
    {32, 512, 128, "list of 512 rows, 32 queries"},
    {64, 512, 128, "list of 512 rows, 64 queries"},
    {16, 512, 768, "list of 512 rows of 768, 16 queries"},
    {32, 512, 768, "list of 512 rows of 768, 32 queries"},
    {64, 512, 768, "list of 512 rows of 768, 64 queries"},
};

static void run(int k, const float *Q, const float *X, const float *P, float *Pw, float *C,
                const struct shape *s)
{
    switch (k) {
    case K_PANEL:
        cl_panel_dots(Q, s->nq, s->dim, P, s->m, C, s->m);
        break;
    case K_PACKED:
        cl_panel_pack(X, s->m, s->dim, Pw);
        cl_panel_dots(Q, s->nq, s->dim, Pw, s->m, C, s->m);
        break;
    case K_SGEMM:
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)s->nq, (int)s->m, (int)s->dim,
                    1.0f, Q, (int)s->dim, X, (int)s->dim, 0.0f, C, (int)s->m);
        break;
    default:
        cl_search_dots(Q, s->nq, X, s->m, s->dim, C, s->m, NULL);
    }
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int repeats = 5;
    double seconds = 0.3;
    uint64_t seed = 1;
    int bad = 0;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
            seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--repeats R] [--seconds S]\n", argv[0]);
            return 2;
        }
    }
    if (repeats < 1 || repeats > 100 || !(seconds > 0)) {
        fprintf(stderr, "%s: --repeats 1..100, --seconds > 0\n", argv[0]);
        return 2;
    }
    printf("# GFLOP/s on one thread (OPENBLAS_NUM_THREADS=%s), median [range] of %d repeats "
           "of ~%.2f s each\n", getenv("OPENBLAS_NUM_THREADS") ? getenv("OPENBLAS_NUM_THREADS")
                                                              : "unset",
           repeats, seconds);
    printf("%-40s %22s %22s %22s %22s\n", "shape (queries x rows x dim)", KNAME[0], KNAME[1],
           KNAME[2], KNAME[3]);
    for (size_t si = 0; si < sizeof(SHAPES) / sizeof(SHAPES[0]); si++) {
        const struct shape *s = &SHAPES[si];
        float *Q = malloc(s->nq * s->dim * sizeof(float));
        float *X = malloc(s->m * s->dim * sizeof(float));
        float *P = malloc(cl_panel_floats(s->m, s->dim) * sizeof(float));
        float *Pw = malloc(cl_panel_floats(s->m, s->dim) * sizeof(float));
        float *C = malloc(s->nq * s->m * sizeof(float)), *R = malloc(s->nq * s->m * sizeof(float));
        double g[NK][100], flop = 2.0 * (double)s->nq * (double)s->m * (double)s->dim;
        char label[64];

        if (!Q || !X || !P || !Pw || !C || !R) {
            fprintf(stderr, "%s: out of memory\n", argv[0]);
            return 1;
        }
        for (size_t i = 0; i < s->nq * s->dim; i++)
            Q[i] = (float)((double)(bu_splitmix(&seed) >> 11) / (double)(1ULL << 53) - 0.5);
        for (size_t i = 0; i < s->m * s->dim; i++)
            X[i] = (float)((double)(bu_splitmix(&seed) >> 11) / (double)(1ULL << 53) - 0.5);
        cl_panel_pack(X, s->m, s->dim, P);
        /* Every kernel agrees with sgemm. */
        run(K_SGEMM, Q, X, P, Pw, R, s);
        for (int k = 0; k < NK; k++) {
            run(k, Q, X, P, Pw, C, s);
            for (size_t i = 0; i < s->nq * s->m; i++)
                if (fabsf(C[i] - R[i]) > 1e-4f * (1.0f + fabsf(R[i]))) {
                    fprintf(stderr, "%s: %s: %s score %zu is %g, sgemm's %g\n", argv[0],
                            s->what, KNAME[k], i, (double)C[i], (double)R[i]);
                    bad = 1;
                    break;
                }
        }
        for (int r = 0; r < repeats; r++)
            for (int k = 0; k < NK; k++) {
                uint64_t t0 = bu_now_ns(), t;
                long n = 0;
                do {
                    run(k, Q, X, P, Pw, C, s);
                    n++;
                    t = bu_now_ns();
                } while ((double)(t - t0) < seconds * 1e9);
                g[k][r] = flop * (double)n / (double)(t - t0);
            }
        snprintf(label, sizeof(label), "%zu x %zu x %zu", s->nq, s->m, s->dim);
        printf("%-40s", label);
        for (int k = 0; k < NK; k++) {
            char cell[64];
            qsort(g[k], (size_t)repeats, sizeof(double), cmp_d);
            snprintf(cell, sizeof(cell), "%.1f [%.1f-%.1f]", g[k][repeats / 2], g[k][0],
                     g[k][repeats - 1]);
            printf(" %22s", cell);
        }
        printf("   # %s\n", s->what);
        free(Q);
        free(X);
        free(P);
        free(Pw);
        free(C);
        free(R);
    }
    return bad;
}
