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
#include "shm/dyntable.h"
#include "shm/index.h"

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

/* The exact score cl_search_finish gives row x (dim floats) for query
 * (qn: |query|, used by cosine): in double, rounded to the float it is
 * returned as; higher is better (L2: the negated squared distance). */
double cl_search_exact(ec_metric metric, const float *query, double qn, const float *x,
                       size_t dim);

/* qsort order of struct cand: best score first, NaN last, equal scores by
 * id. */
int cl_search_cand_cmp(const void *a, const void *b);

/* client_ivf.c: ec_search with opts->nprobe > 0, called by ec_search after
 * it checked its arguments, for a tensor or a dynamic table (cl_ivf_release,
 * for the handle, is declared in client_impl.h). */
int cl_ivf_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                  ec_metric metric, const ec_search_opts *opts, float *scores, int64_t *ids);

/* client_dynsearch.c: exact search over a dynamic table, by key, called by
 * ec_search after it checked its arguments. */
int cl_dyn_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                  ec_metric metric, float *scores, int64_t *ids);

/* client_dynivf.c: what the approximate search of a dynamic table adds to a
 * tensor's (client_ivf.c): the table, the rows written since the index was
 * built (the delta), and the answer scored against each key's row now.
 *
 * One struct cl_dynivf per chunk of queries: cl_dynivf_begin finds the
 * table and reads its lsn (acquire); cl_dynivf_delta offers every live row
 * of a slot newer than the build to the queries' heaps; then the lists are
 * scanned, and cl_dynivf_keep says which of their keys to offer (present,
 * and not offered by the delta already); cl_dynivf_finish answers a query;
 * cl_dynivf_end checks the table was not dropped meanwhile. keep runs on
 * any of the search's threads; the others on the caller's. The delta is
 * found from the slots' headers, all of them, unless the table's lsn is
 * the index's (no delta) or cache holds the scan of this lsn. */
/* The slots the last full delta scan of a handle's index found (those of
 * an lsn above the index's built_lsn), valid while the table is the same
 * extent (its index entry's offset and seq) at the same lsn: every batch
 * and delete moves the table's lsn, so until it moves, no other slot gets
 * above built_lsn (but the batch being applied, which a search may miss as
 * it may miss any write concurrent with it). A search reads only these
 * slots then, not every slot's header. One per mapped index (struct
 * cl_ivf, client_ivf.c), behind its lock. */
struct cl_dyndelta {
    pthread_mutex_t lock;
    uint64_t off, eseq, lsn;    /* the table when scanned */
    uint64_t n;
    uint64_t *slots;            /* n; NULL: no scan kept */
};

void cl_dyndelta_init(struct cl_dyndelta *c);
void cl_dyndelta_destroy(struct cl_dyndelta *c);

struct cl_dynivf {
    ec_tensor *t;
    struct cl_dyndelta *cache;  /* the index's, or NULL */
    ec_index_ref ref;
    ec_dyn_view v;
    uint64_t built_lsn;         /* the index's */
    uint64_t lsn;               /* the table's at begin: the delta covers (built, lsn] */
    uint64_t delta;             /* rows the delta offered */
    uint64_t *slots, nslots_d;  /* the delta's slots (to keep in the cache) */
    float *X, *norms, *C, *fbuf;
    uint8_t *raw;
    int64_t *keys;
    struct cand *cd;
};

int cl_dynivf_begin(struct cl_dynivf *d, ec_tensor *t, uint64_t built_lsn, size_t kp,
                    struct cl_dyndelta *cache);
int cl_dynivf_delta(struct cl_dynivf *d, const float *qs, size_t nq, size_t dim,
                    ec_metric metric, size_t kp, struct hent *heap, uint32_t *hn, float *thr);
bool cl_dynivf_keep(const struct cl_dynivf *d, int64_t key);
int cl_dynivf_finish(struct cl_dynivf *d, ec_metric metric, const float *query, size_t dim,
                     const struct hent *h, uint32_t n, size_t k, float *scores, int64_t *ids);
int cl_dynivf_end(struct cl_dynivf *d);
void cl_dynivf_free(struct cl_dynivf *d);

#endif
