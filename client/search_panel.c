/*
 * search_panel.c - the scores of many queries against rows packed for it:
 * in approximate search (client/client_ivf.c), the coarse step (the
 * index's centroids, packed once per handle) and the lists that many
 * queries probe (packed as they are scanned); in a dynamic table's search
 * (client/client_dynivf.c), the assignment of new rows to their lists and
 * the new rows of a list that many queries probe.
 *
 * Why not cblas_sgemm: those steps run inside searches that start threads of
 * their own. OpenBLAS's pthread build runs a product of that size on its own
 * thread pool, whose threads then spin in sched_yield for a while after each
 * call; on a machine with as many cores as search threads they took one core
 * of two away from the search's scan (measured: 40% of the CPU time of a
 * batched search on 2 vCPUs). This kernel runs on the thread that calls it,
 * and the search splits its work among its own threads. On one thread it
 * also outruns Debian's OpenBLAS 0.3.21 (which runs its Haswell kernel on
 * newer x86 cores): 140 against 94 GFLOP/s for 256 x 2048 x 128 on the
 * 2-vCPU VM (bench/results/2026-12-05-vm-panel.txt).
 *
 * The layout: rows in panels of EC_PANEL_W, each panel stored by column
 * (P[p][j][i] = X[p * W + i][j]), so the kernel broadcasts one query value
 * and multiplies it into W rows' values with one vector instruction, for a
 * tile of up to TILE_Q queries at once (accumulators in registers, no
 * horizontal sums). Compiled for AVX-512, AVX2+FMA and the baseline.
 *
 * Pure functions of their arguments; any thread may call them.
 */
#include <string.h>

#include "client/search_impl.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define PANEL_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", \
                                                  "default")))
#else
#define PANEL_CLONES
#endif

#define W EC_PANEL_W
/* Queries scored together against one panel (accumulators: TILE_Q vectors
 * of W floats; 6 x 16 fits AVX2's sixteen registers with room for the
 * panel's column and the broadcast). */
#define TILE_Q 6
/* Queries whose rows stay in L1 while the panels go by. */
#define BLOCK_Q 24

typedef float vw __attribute__((vector_size(W * sizeof(float))));

size_t cl_panel_floats(size_t m, size_t dim)
{
    return (m + W - 1) / W * W * dim;
}

void cl_panel_pack(const float *X, size_t m, size_t dim, float *P)
{
    size_t np = (m + W - 1) / W;

    for (size_t p = 0; p < np; p++) {
        float *dst = P + p * W * dim;
        /* Row by row: each row read in order, its values W floats apart
         * in the panel, which stays in L1. */
        for (size_t i = 0; i < W; i++) {
            size_t r = p * W + i;
            const float *src = X + r * dim;
            if (r < m)
                for (size_t j = 0; j < dim; j++)
                    dst[j * W + i] = src[j];
            else
                for (size_t j = 0; j < dim; j++)
                    dst[j * W + i] = 0.0f;
        }
    }
}

/* C[t * ldc + i] (t < nt, i < w) = Q[t] . row i of panel P. */
static inline __attribute__((always_inline)) void tile(const float *restrict Q, size_t ldq,
                                                       const float *restrict P, size_t dim,
                                                       float *restrict C, size_t ldc,
                                                       const int nt, size_t w)
{
    vw acc[TILE_Q];

    for (int t = 0; t < nt; t++)
        acc[t] = (vw){0};
    for (size_t j = 0; j < dim; j++) {
        vw c;
        memcpy(&c, P + j * W, sizeof(c));
        for (int t = 0; t < nt; t++)
            acc[t] += Q[(size_t)t * ldq + j] * c;
    }
    for (int t = 0; t < nt; t++) {
        if (w == W) {
            memcpy(C + (size_t)t * ldc, &acc[t], sizeof(vw));
        } else {
            float o[W];
            memcpy(o, &acc[t], sizeof(o));
            memcpy(C + (size_t)t * ldc, o, w * sizeof(float));
        }
    }
}

PANEL_CLONES
void cl_panel_dots(const float *Q, size_t nq, size_t dim, const float *P, size_t m, float *C,
                   size_t ldc)
{
    size_t np = (m + W - 1) / W;

    for (size_t q0 = 0; q0 < nq; q0 += BLOCK_Q) {
        size_t qe = nq - q0 < BLOCK_Q ? nq : q0 + BLOCK_Q;
        for (size_t p = 0; p < np; p++) {
            const float *pp = P + p * W * dim;
            size_t w = m - p * W < W ? m - p * W : W;
            size_t q = q0;
            for (; q + TILE_Q <= qe; q += TILE_Q)
                tile(Q + q * dim, dim, pp, dim, C + q * ldc + p * W, ldc, TILE_Q, w);
            switch (qe - q) {
            case 5: tile(Q + q * dim, dim, pp, dim, C + q * ldc + p * W, ldc, 5, w); break;
            case 4: tile(Q + q * dim, dim, pp, dim, C + q * ldc + p * W, ldc, 4, w); break;
            case 3: tile(Q + q * dim, dim, pp, dim, C + q * ldc + p * W, ldc, 3, w); break;
            case 2: tile(Q + q * dim, dim, pp, dim, C + q * ldc + p * W, ldc, 2, w); break;
            case 1: tile(Q + q * dim, dim, pp, dim, C + q * ldc + p * W, ldc, 1, w); break;
            default: break;
            }
        }
    }
}
