/*
 * search_impl.h - private to the search files of libembcache: what exact
 * search (client/client_search.c) lends the approximate one
 * (client/client_ivf.c, client/client_dynivf.c), the exact search of a
 * dynamic table (client/client_dynsearch.c) and the index builder
 * (client/client_index.c), so that all score rows with the same kernels
 * (and the panel kernel of client/search_panel.c), run on threads the same
 * way (cl_run_parallel) and answer with the same double-precision
 * re-scoring; and the per-handle index the IVF search keeps (struct
 * ec_tensor's ivf, released with the handle).
 *
 * Everything here runs on the thread that calls it, except what
 * cl_run_parallel runs on the threads it starts; nothing holds a lock but
 * a dynamic index's snapshot cache (struct cl_dyndelta).
 */
#ifndef EC_CLIENT_SEARCH_IMPL_H
#define EC_CLIENT_SEARCH_IMPL_H

#include <math.h>
#include <stdatomic.h>
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

/* client/search_panel.c: the scores of nq queries against m rows packed
 * once, in panels of EC_PANEL_W rows stored by column. cl_panel_floats: the
 * floats the packed form of m rows of dim takes; cl_panel_pack: X (m rows)
 * into P; cl_panel_dots: C[q * ldc + r] = Q[q] . X[r] (r < m) from P. */
#define EC_PANEL_W 16
/* Rows a scan packs at once (256 KiB at dim 128: they stay in the core's
 * L2 while every query goes by). */
#define CL_PANEL_ROWS 512u
size_t cl_panel_floats(size_t m, size_t dim);

/* Whether rows scored against nq queries of dim are worth packing for the
 * panel kernel rather than scored in place by cl_search_dots: from
 * EC_SEARCH_GEMM_MIN queries, and from dim / 12 (the vector kernel's long
 * dot products close the gap as dim grows; bench/panelbench.c measured
 * the crossing near 16 queries at dim 128 and near 64 at dim 768). */
static inline bool cl_panel_pays(size_t nq, size_t dim)
{
    return nq >= EC_SEARCH_GEMM_MIN && nq * 12 >= dim;
}

void cl_panel_pack(const float *X, size_t m, size_t dim, float *P);
void cl_panel_dots(const float *Q, size_t nq, size_t dim, const float *P, size_t m, float *C,
                   size_t ldc);

/* n values of dtype dt (f32, f16, bf16) at src to f32. */
void cl_to_f32(float *dst, const uint8_t *src, size_t n, ec_dtype dt);

/* The CPUs this process may run on (at least 1). */
unsigned cl_cpus(void);

/* Threads of one search, at most. */
#define CL_THREADS_MAX 256u

/* The error a search's thread met, kept for the caller (ec_last_error is
 * per thread): cl_terr_set keeps it and raises *failed, which the other
 * threads poll to stop; cl_terr_first gives the caller the first of n. */
struct cl_terr {
    int rc;
    char msg[EC_ERRMSG_MAX];
};

static inline void cl_terr_set(struct cl_terr *e, int rc, _Atomic int *failed)
{
    e->rc = rc;
    snprintf(e->msg, sizeof(e->msg), "%s", ec_last_error());
    atomic_store_explicit(failed, 1, memory_order_relaxed);
}

/* The first error among n threads' (struct cl_terr at base + i * size),
 * set as this thread's, or 0. */
static inline int cl_terr_first(const void *base, size_t size, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        const struct cl_terr *e = (const void *)((const char *)base + i * size);
        if (e->rc)
            return ec_seterr(e->rc, "%s", e->msg);
    }
    return 0;
}

/* Thread i's share [*lo, *hi) of n items split among parts threads. */
static inline void cl_share(size_t n, unsigned parts, unsigned i, size_t *lo, size_t *hi)
{
    size_t share = (n + parts - 1) / parts;

    *lo = (size_t)i * share < n ? (size_t)i * share : n;
    *hi = *lo + share < n ? *lo + share : n;
}

/* fn(arg + i * size) for each i < n (at most CL_THREADS_MAX): i = 0 on the
 * calling thread, the others on threads started for them; the share of a
 * thread that cannot be started is run by the caller after its own.
 * Returns when every call has returned. */
void cl_run_parallel(unsigned n, void *arg, size_t size, void *(*fn)(void *));

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
                  ec_metric metric, uint32_t threads, float *scores, int64_t *ids);

/* client_dynivf.c: what the approximate search of a dynamic table adds to a
 * tensor's (client_ivf.c): the table, the rows written since the index was
 * built (the delta), assigned to the index's lists as a build would, and
 * the answer scored against each key's row of now.
 *
 * One struct cl_dynivf per chunk of queries: cl_dynivf_begin finds the
 * table and reads its lsn (acquire) and takes the snapshot of the delta at
 * that lsn (made or shared); then the lists are scanned: for each,
 * cl_dynivf_delta_list offers the live rows of the delta that lie in it to
 * the heaps of the queries that probe it, and cl_dynivf_list_keep says
 * which of its own keys to offer (present, and not in the delta: each
 * probed list's keys are looked up once per snapshot, the answer kept in
 * it for every search at the same lsn); cl_dynivf_finish answers a query;
 * cl_dynivf_end checks the table was not dropped meanwhile. begin and end
 * run on the caller's thread; delta_list, list_keep and finish on any of
 * the search's threads, each with a struct cl_dynscratch of its own. */

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
    /* Which of the index's entries to offer, list by list, as first looked
     * up by a search at this lsn (cl_dynivf_list_keep): keep[e] for entry e
     * of the index's ids is valid once ready[l] of its list is 1 (release);
     * threads that race on a list both write it, each value a true answer
     * at some moment past lsn. */
    uint64_t rows;              /* the index's entries */
    atomic_uchar *keep;         /* rows */
    atomic_uchar *ready;        /* nlist */
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
    struct cl_dsnap *snap;      /* the delta at lsn (a reference), or NULL */
};

/* One thread's scratch for the steps of a dynamic table's search. */
struct cl_dynscratch {
    float *X;                   /* rows read: a block of dim-float rows */
    float *P;                   /* the block packed for the panel kernel */
    float *norms;               /* the block's */
    int64_t *keys;              /* the block's */
    uint8_t *raw;               /* EC_DYN_BATCH rows as stored */
    float *C;                   /* scores, ccap floats */
    size_t ccap;
    struct cand *cd;            /* kp candidates */
};

int cl_dynscratch_alloc(struct cl_dynscratch *w, const ec_tensor *t, size_t kp);
void cl_dynscratch_free(struct cl_dynscratch *w);

/* What the steps need of the search: its queries (as scored), the index's
 * centroids, and which queries probe each list (client_ivf.c's invert). */
struct cl_dynprobe {
    const float *q;
    size_t nq, dim, kp;
    ec_metric metric;
    uint32_t nlist;
    const float *cnorms;        /* nlist: |c|^2 */
    const float *cpanel;        /* the centroids packed (cl_panel_pack) */
    uint64_t rows;              /* the index's entries */
    const uint32_t *qstart;     /* nlist + 1 */
    const uint32_t *qlist;
};

/* A thread's heaps: kp entries per query of the chunk. */
struct cl_heaps {
    struct hent *heap;          /* nq * kp */
    uint32_t *hn;
    float *thr;
};

/* Offer query q's entries of heaps `from` to its heap in `into` (the merge
 * of a search's per-thread heaps). */
static inline void cl_heaps_merge(struct cl_heaps *into, const struct cl_heaps *from, size_t q,
                                  size_t kp)
{
    for (uint32_t j = 0; j < from->hn[q]; j++)
        cl_search_heap_offer(into->heap + q * kp, &into->hn[q], kp, &into->thr[q],
                             from->heap[q * kp + j].key, from->heap[q * kp + j].id);
}

int cl_dynivf_begin(struct cl_dynivf *d, ec_tensor *t, uint64_t built_lsn,
                    struct cl_dyndelta *cache, const struct cl_dynprobe *p,
                    struct cl_dynscratch *w);
int cl_dynivf_delta_list(const struct cl_dynivf *d, const struct cl_dynprobe *p, uint32_t l,
                         const float *Qb, const struct cl_heaps *hp, struct cl_dynscratch *w);
const atomic_uchar *cl_dynivf_list_keep(const struct cl_dynivf *d, uint32_t l,
                                        const int64_t *ids, uint64_t e0, uint64_t e1);
int cl_dynivf_finish(const struct cl_dynivf *d, struct cl_dynscratch *w, ec_metric metric,
                     const float *query, size_t dim, const struct hent *h, uint32_t n,
                     size_t k, float *scores, int64_t *ids);
int cl_dynivf_end(struct cl_dynivf *d);
void cl_dynivf_free(struct cl_dynivf *d);

#endif
