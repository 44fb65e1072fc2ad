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

#include <math.h>
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

/* The list a row belongs to, from its scores s against nl centroids: the
 * largest s[l] (IP, cosine) or 2 s[l] - cnorms[l] (L2: cnorms not NULL);
 * ties to the smaller list. The build and the dynamic delta both use it. */
static inline uint32_t cl_search_nearest(const float *s, size_t nl, const float *cnorms)
{
    float best = -INFINITY;
    uint32_t bl = 0;

    for (size_t l = 0; l < nl; l++) {
        float key = cnorms ? 2.0f * s[l] - cnorms[l] : s[l];
        if (key > best) {
            best = key;
            bl = (uint32_t)l;
        }
    }
    return bl;
}

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
 * built (the delta), assigned to the index's lists as a build would, and
 * the answer scored against each key's row of now.
 *
 * One struct cl_dynivf per chunk of queries: cl_dynivf_begin finds the
 * table and reads its lsn (acquire); cl_dynivf_delta offers the live rows
 * of slots newer than the build that lie in the lists each query probes to
 * its heap; then the lists are scanned, and cl_dynivf_keep_many says which
 * of their keys to offer (present, and not in the delta; up to
 * EC_DYN_BATCH keys looked up at once); cl_dynivf_finish answers a query;
 * cl_dynivf_end checks the table was not dropped meanwhile. keep_many runs
 * on any of the search's threads; the others on the caller's. */

/* The delta of a table at one lsn, with each row's list: found from every
 * slot's header, and only the rows new since the snapshot before it read
 * and assigned to their nearest centroid (a slot whose lsn did not move
 * holds the row it held). Immutable once made; shared by the searches
 * that hold a reference. */
struct cl_dsnap {
    _Atomic uint32_t refs;
    uint64_t off, eseq, lsn;    /* the table (its extent) and its lsn when scanned */
    uint64_t n;                 /* delta slots */
    uint64_t *slots;            /* n, ascending */
    uint64_t *slsn;             /* n: each slot's lsn as its header was peeked */
    uint32_t *list;             /* n: the list its row was assigned to */
    uint32_t nlist;
    uint64_t *lstart;           /* nlist + 1: list l's entries are lent[lstart[l]..) */
    uint64_t *lent;             /* n: indices into slots, by list */
};

/* A mapped index's latest snapshot (struct cl_ivf, client_ivf.c), behind
 * its lock; a search at the same table and lsn takes a reference to it,
 * one at a new lsn builds the next from it. */
struct cl_dyndelta {
    pthread_mutex_t lock;
    struct cl_dsnap *snap;      /* NULL: none yet */
};

void cl_dyndelta_init(struct cl_dyndelta *c);
void cl_dyndelta_destroy(struct cl_dyndelta *c);

struct cl_dynivf {
    ec_tensor *t;
    struct cl_dyndelta *cache;  /* the index's */
    ec_index_ref ref;
    ec_dyn_view v;
    uint64_t built_lsn;         /* the index's */
    uint64_t lsn;               /* the table's at begin: the delta covers (built, lsn] */
    uint64_t delta;             /* rows the delta offered */
    struct cl_dsnap *snap;      /* the delta at lsn (a reference), or NULL */
    float *X, *norms, *C, *Qb;
    uint8_t *raw;
    int64_t *keys;
    struct cand *cd;
};

/* What cl_dynivf_delta needs of the search: its queries (as scored), the
 * index's centroids, and which queries probe each list (client_ivf.c's
 * invert). */
struct cl_dynprobe {
    const float *q;
    size_t nq, dim, kp;
    ec_metric metric;
    uint32_t nlist;
    const float *centroids;     /* nlist * dim */
    const float *cnorms;        /* nlist: |c|^2 */
    const uint32_t *qstart;     /* nlist + 1 */
    const uint32_t *qlist;
    struct hent *heap;          /* nq * kp */
    uint32_t *hn;
    float *thr;
};

int cl_dynivf_begin(struct cl_dynivf *d, ec_tensor *t, uint64_t built_lsn, size_t kp,
                    struct cl_dyndelta *cache);
int cl_dynivf_delta(struct cl_dynivf *d, const struct cl_dynprobe *p);
void cl_dynivf_keep_many(const struct cl_dynivf *d, const int64_t *keys, size_t n,
                         bool *keep);
int cl_dynivf_finish(struct cl_dynivf *d, ec_metric metric, const float *query, size_t dim,
                     const struct hent *h, uint32_t n, size_t k, float *scores, int64_t *ids);
int cl_dynivf_end(struct cl_dynivf *d);
void cl_dynivf_free(struct cl_dynivf *d);

#endif
