/*
 * search_impl.h - private to the search files of libembcache: what exact
 * search (client/client_search.c) lends the approximate one
 * (client/client_ivf.c) and the index builder (client/client_index.c), so
 * that both score rows with the same kernels and answer with the same
 * double-precision re-scoring, and the per-handle index the IVF search
 * keeps (struct ec_tensor's ivf, released with the handle).
 *
 * Everything here runs on the thread that calls it; nothing holds a lock.
 */
#ifndef EC_CLIENT_SEARCH_IMPL_H
#define EC_CLIENT_SEARCH_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/client_impl.h"

/* One entry of a top-k heap: key "higher is better" for every metric (L2:
 * 2 q.x - |x|^2), a NaN key counts as -INFINITY. */
struct hent {
    float key;
    int64_t id;
};

/* A candidate being scored again (cl_search_finish's scratch, kp of them). */
struct cand {
    double score;        /* exact; higher is better (L2: negated distance) */
    int64_t id;
};

/* C[q * ldc + r] = Q[q] . X[r] (r < m), and norms[r] = |X[r]|^2 when norms is
 * not NULL: the vectorized kernel of exact search. */
void cl_search_dots(const float *Q, size_t nq, const float *X, size_t m, size_t dim, float *C,
                    size_t ldc, float *norms);

/* Offer (key, id) to heap h of *n entries (capacity kp, worst at the root);
 * keeps *thr = the key a row must beat once the heap is full. */
void cl_search_heap_offer(struct hent *h, uint32_t *n, size_t kp, float *thr, float key,
                          int64_t id);

/* n values of dtype dt (f32, f16, bf16) at src to f32. */
void cl_to_f32(float *dst, const uint8_t *src, size_t n, ec_dtype dt);

/* The CPUs this process may run on (at least 1). */
unsigned cl_cpus(void);

/* The last step of a search for one query: its n candidates h gathered from
 * the tensor (in blocks of rpp rows through ids/buf/raw), scored again in
 * double precision, sorted by (score, id) and written as k results (id -1
 * and -INFINITY, or +INFINITY for L2, past the candidates). */
struct cl_finish {
    ec_tensor *t;
    ec_metric metric;
    ec_dtype dtype;
    size_t dim, k;
    uint64_t rpp;
    int64_t *ids;        /* rpp */
    float *buf;          /* rpp * dim */
    uint8_t *raw;        /* rpp * row_bytes, for f16/bf16 */
    struct cand *cd;     /* as many as candidates */
};
int cl_search_finish(const struct cl_finish *f, const float *query, const struct hent *h,
                     uint32_t n, float *scores, int64_t *ids);

/* client_ivf.c: ec_search with opts->nprobe > 0, called by ec_search after
 * it checked its arguments (cl_ivf_release, for the handle, is declared in
 * client_impl.h). */
int cl_ivf_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                  ec_metric metric, const ec_search_opts *opts, float *scores, int64_t *ids);

/* client_dynsearch.c: exact search over a dynamic table, by key, called by
 * ec_search after it checked its arguments. */
int cl_dyn_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                  ec_metric metric, float *scores, int64_t *ids);

#endif
