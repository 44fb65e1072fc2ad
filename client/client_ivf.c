/*
 * client_ivf.c - approximate top-k through a tensor's IVF-Flat index:
 * ec_search() with opts.nprobe > 0 (include/embcache_search.h), and
 * ec_index_info_get().
 *
 * Called by ec_search (client_search.c) on the caller's thread, which
 * starts up to opts.threads - 1 more for each of steps 1, 3 and 4 below
 * and joins them before the next step. None of those steps calls a
 * multithreaded library: OpenBLAS's pool, which spins after each product,
 * would compete with them for the same cores (client/search_panel.c).
 * Never writes the segment or the index; takes the client's lock only for
 * the INDEX_OPEN request and inside the gathers of the final scoring.
 *
 * The index. The first approximate search of a handle asks the daemon for
 * the index file (INDEX_OPEN: a read-only descriptor; the daemon checked the
 * file's checksums when it stored it, and clients cannot write it), maps it
 * PROT_READ and checks its structure (common/ivffile.h: sections in bounds,
 * list offsets, every id in range and once) and that it is the index of
 * this very tensor (id, rows, dim). The mapping is published on the handle
 * with a compare-and-swap: threads that raced map it too and drop theirs.
 * It stays until the handle is released (cl_ivf_release).
 *
 * A search, for chunks of at most QCHUNK queries:
 *   1. coarse: every query against the nlist centroids (the panel kernel,
 *      client/search_panel.c, on centroids packed when the index is
 *      mapped; the queries split among the search's threads), keys as
 *      exact search's (IP and cosine: q.c; L2: 2 q.c - |c|^2); the nprobe
 *      best lists per query are kept;
 *   2. inverted: for each list, the queries that probe it;
 *   3. fine: threads claim lists; each list's rows are scored against the
 *      queries that probe it (few: the vectorized kernel, each row read
 *      once for all of them; enough that packing pays, cl_panel_pays: the
 *      panel kernel, CL_PANEL_ROWS rows packed at a time) into heaps of the
 *      thread's own, k + slack per query;
 *   4. the answer, the queries split among the threads: each query's
 *      candidates are merged from every thread's heaps, gathered from the
 *      tensor and scored again in double precision (cl_search_finish),
 *      exactly as exact search answers, so a row found has the score exact
 *      search gives it.
 * Invariants: a list is scanned by one thread per chunk; a row is offered to
 * a query's heap at most once per chunk (it is in one list, and a query
 * probes a list once); every id offered came from the checked ids section.
 *
 * A dynamic table's index (KEYED: its ids are keys) is searched the same
 * way, with the steps of client_dynivf.c around it: with each list, the
 * thread that scans it offers the rows written since the build that lie in
 * it (each assigned to its nearest centroid) to its heaps; a
 * list's key is offered only if cl_dynivf_list_keep says so; the answer is
 * scored against each key's row of now (cl_dynivf_finish) instead of
 * gathered by row id. There a key may be offered twice (by the delta and a
 * list, or twice by an unchecked file): the finish drops repeats.
 */
#include <math.h>

#include "client/client_impl.h"
#include "client/search_impl.h"
#include "common/ivffile.h"

/* Queries per chunk (bounds the heaps, the probes and the score buffers). */
#define QCHUNK 8192
/* Floats of a score buffer (coarse and fine), at most: 16 MiB. */
#define SCORE_FLOATS ((size_t)4 << 20)

struct cl_ivf {
    void *map;
    size_t size;
    ec_ivf_view v;
    float *cnorms;              /* nlist: |c|^2 of each centroid */
    float *cpanel;              /* the centroids packed for cl_panel_dots */
    uint64_t min_list, max_list;
    bool keyed;                 /* a dynamic table's: ids are keys */
    struct cl_dyndelta delta;   /* keyed: its delta, as last scanned and assigned */
};

void cl_ivf_release(struct cl_ivf *x)
{
    if (!x)
        return;
    munmap(x->map, x->size);
    free(x->cnorms);
    free(x->cpanel);
    cl_dyndelta_destroy(&x->delta);
    free(x);
}

/* ------------------------------------------------------------------ */
/* The index of a handle                                               */

/* INDEX_OPEN: the descriptor of t's index. */
static int index_open_fd(ec_tensor *t, int *out)
{
    ec_client *c = t->c;
    char version[32];
    int fds[1], nfds = 0, rc;
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;
    uint64_t size;

    snprintf(version, sizeof(version), "%lld", (long long)t->t.version);
    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, EC_OP_INDEX_OPEN);
    ec_put_str(&w, t->t.model);
    ec_put_str(&w, version);
    ec_put_str(&w, t->t.name);
    rc = cl_rpc(c, &w, id, NULL, 0, &body, fds, &nfds, 1);
    if (rc == 0) {
        size = ec_get_u64(&body);
        if (!ec_rbuf_done(&body) || nfds != 1 || size < EC_IVF_HEADER_SIZE)
            rc = ec_seterr(EC_EPROTO, "malformed INDEX_OPEN reply (%d descriptors)", nfds);
    }
    pthread_mutex_unlock(&c->lock);
    if (rc) {
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        return rc;
    }
    *out = fds[0];
    return 0;
}

static int ivf_map(ec_tensor *t, struct cl_ivf **out)
{
    struct cl_ivf *x = calloc(1, sizeof(*x));
    struct stat st;
    int fd = -1, rc;

    if (!x)
        return ec_seterr(EC_ENOMEM, "index of tensor '%s'", t->t.name);
    x->map = MAP_FAILED;
    cl_dyndelta_init(&x->delta);
    if ((rc = index_open_fd(t, &fd)))
        goto fail;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size < EC_IVF_HEADER_SIZE) {
        rc = ec_seterr(EC_EFORMAT, "the index of tensor '%s' of model '%s' is not a regular "
                                   "file of at least a header", t->t.name, t->t.model);
        goto fail;
    }
    x->size = (size_t)st.st_size;
    x->map = mmap(NULL, x->size, PROT_READ, MAP_SHARED, fd, 0);
    if (x->map == MAP_FAILED) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot map the %zu-byte index of tensor '%s'",
                             x->size, t->t.name);
        goto fail;
    }
    close(fd);
    fd = -1;
    if ((rc = ec_ivf_check(x->map, x->size, false, &x->v))) {
        ec_adderr(rc, "tensor '%s' of model '%s' version %lld", t->t.name, t->t.model,
                  (long long)t->t.version);
        goto fail;
    }
    x->keyed = (x->v.h->flags & EC_IVF_KEYED) != 0;
    if (atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_DYNAMIC) {
        if (!x->keyed) {
            rc = ec_seterr(EC_EINVAL, "the index of tensor '%s' of model '%s' version %lld was "
                                      "built before it was made a dynamic table (its ids are "
                                      "row numbers, not keys): build it again (`embcache "
                                      "index build %s %lld %s`)", t->t.name, t->t.model,
                           (long long)t->t.version, t->t.model, (long long)t->t.version,
                           t->t.name);
            goto fail;
        }
    } else if (x->keyed) {
        rc = ec_seterr(EC_EFORMAT, "the index the daemon holds for tensor '%s' of model '%s' "
                                   "version %lld is of a dynamic table's keys, and the tensor "
                                   "is not a dynamic table: build it again", t->t.name,
                       t->t.model, (long long)t->t.version);
        goto fail;
    }
    if (x->v.h->tensor_id != t->t.id || (!x->keyed && x->v.rows != t->t.rows) ||
        x->v.dim != t->t.shape[1] || x->v.h->version != t->t.version ||
        strcmp(x->v.h->model, t->t.model) || strcmp(x->v.h->tensor, t->t.name)) {
        rc = ec_seterr(EC_EFORMAT, "the index the daemon holds for tensor '%s' of model '%s' "
                                   "version %lld is of another tensor ('%s' of '%s' version "
                                   "%lld, %llu x %llu): build it again", t->t.name,
                       t->t.model, (long long)t->t.version, x->v.h->tensor, x->v.h->model,
                       (long long)x->v.h->version, (unsigned long long)x->v.rows,
                       (unsigned long long)x->v.dim);
        goto fail;
    }
    if (!(x->cnorms = malloc(x->v.nlist * sizeof(float))) ||
        !(x->cpanel = malloc(cl_panel_floats(x->v.nlist, (size_t)x->v.dim) * sizeof(float)))) {
        rc = ec_seterr(EC_ENOMEM, "norms and packed copy of %u centroids", x->v.nlist);
        goto fail;
    }
    cl_search_dots(NULL, 0, x->v.centroids, x->v.nlist, (size_t)x->v.dim, NULL, 0, x->cnorms);
    cl_panel_pack(x->v.centroids, x->v.nlist, (size_t)x->v.dim, x->cpanel);
    x->min_list = UINT64_MAX;
    for (uint32_t l = 0; l < x->v.nlist; l++) {
        uint64_t n = x->v.offsets[l + 1] - x->v.offsets[l];
        x->min_list = n < x->min_list ? n : x->min_list;
        x->max_list = n > x->max_list ? n : x->max_list;
    }
    *out = x;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    if (x->map != MAP_FAILED)
        munmap(x->map, x->size);
    free(x->cnorms);
    free(x->cpanel);
    cl_dyndelta_destroy(&x->delta);
    free(x);
    return rc;
}

/* t's index, mapped by this call or an earlier one. */
static int ivf_get(ec_tensor *t, struct cl_ivf **out)
{
    struct cl_ivf *x = atomic_load_explicit(&t->ivf, memory_order_acquire), *none = NULL;
    int rc;

    if (!x) {
        if ((rc = ivf_map(t, &x)))
            return rc;
        if (!atomic_compare_exchange_strong_explicit(&t->ivf, &none, x, memory_order_acq_rel,
                                                     memory_order_acquire)) {
            cl_ivf_release(x); /* another thread published one first */
            x = none;
        }
    }
    *out = x;
    return 0;
}

int ec_index_info_get(ec_tensor *t, ec_index_info *out)
{
    struct cl_ivf *x;
    int rc;

    if (!t || !out)
        return ec_seterr(EC_EINVAL, "ec_index_info_get: NULL argument");
    if ((rc = cl_stale(t->c)) || (rc = ivf_get(t, &x)))
        return rc;
    memset(out, 0, sizeof(*out));
    out->metric = x->v.metric;
    out->nlist = x->v.nlist;
    out->rows = x->v.rows;
    out->dim = x->v.dim;
    out->min_list = x->min_list;
    out->max_list = x->max_list;
    out->file_bytes = x->size;
    out->train_rows = x->v.h->train_rows;
    out->iters = x->v.h->iters;
    out->built_lsn = x->v.h->built_lsn;
    return 0;
}

/* ------------------------------------------------------------------ */
/* A search                                                            */

struct ivs;

struct iworker {
    struct ivs *s;
    unsigned idx;
    struct cl_heaps hp;         /* this thread's heaps: n * kp */
    float *Qb;                  /* the queries of one list, packed */
    float *C;                   /* scores of a sub-block */
    float *P;                   /* a sub-block packed for the panel kernel */
    struct cl_dynscratch ds;    /* a dynamic table's search: the steps' scratch */
    struct cl_finish f;         /* a tensor's: the finish's scratch */
    struct cl_terr err;         /* the error this thread met */
};

struct ivs {
    struct cl_ivf *x;           /* (its delta cache is written) */
    ec_tensor *t;
    ec_metric metric;
    size_t dim, kp, k;
    const float *q;             /* this chunk's queries as scored */
    const float *raw_q;         /* as given (the finish scores these) */
    size_t n;                   /* queries in the chunk */
    float *scores;              /* the chunk's answers: n * k */
    int64_t *ids;
    uint32_t nprobe;
    uint32_t *probe;            /* n * nprobe lists */
    uint32_t *qstart;           /* nlist + 1: list l's queries are qlist[qstart[l]..) */
    uint32_t *qlist;            /* n * nprobe query numbers (of the chunk) */
    uint32_t *active;           /* lists probed by some query */
    uint32_t nactive;
    _Atomic uint32_t next;      /* the next entry of active to claim */
    _Atomic int failed;         /* a thread met an error: the others stop */
    struct cl_dynivf *dyn;      /* a dynamic table's search: its steps; else NULL */
    const struct cl_dynprobe *dp;
    unsigned nthreads;
    size_t cfloats;             /* floats of a thread's score buffer */
    struct iworker *w;
};

/* The nprobe best lists of queries [q0, q1) of the chunk into s->probe,
 * scored against the packed centroids in blocks of `step` queries through
 * C (step * nlist floats) and h (nprobe entries). */
static void coarse_range(const struct ivs *s, size_t q0, size_t q1, size_t step, float *C,
                         struct hent *h)
{
    const ec_ivf_view *v = &s->x->v;
    size_t nl = v->nlist;

    for (size_t b0 = q0; b0 < q1; b0 += step) {
        size_t m = q1 - b0 < step ? q1 - b0 : step;
        cl_panel_dots(s->q + b0 * s->dim, m, s->dim, s->x->cpanel, nl, C, nl);
        for (size_t i = 0; i < m; i++) {
            const float *c = C + i * nl;
            uint32_t hn = 0;
            float thr = -INFINITY;
            for (size_t l = 0; l < nl; l++) {
                float key = s->metric == EC_METRIC_L2 ? 2.0f * c[l] - s->x->cnorms[l] : c[l];
                if (key != key)
                    key = -INFINITY;
                if (hn < s->nprobe || key > thr)
                    cl_search_heap_offer(h, &hn, s->nprobe, &thr, key, (int64_t)l);
            }
            for (uint32_t j = 0; j < s->nprobe; j++)
                s->probe[(b0 + i) * s->nprobe + j] = (uint32_t)h[j].id;
        }
    }
}

/* One thread's share of the coarse step. */
struct cworker {
    const struct ivs *s;
    size_t q0, q1, step;
    float *C;
    struct hent *h;
};

static void *coarse_worker(void *arg)
{
    struct cworker *w = arg;

    coarse_range(w->s, w->q0, w->q1, w->step, w->C, w->h);
    return NULL;
}

/* The nprobe best lists of each query of the chunk into s->probe: the
 * queries split among up to `asked` threads (0: the CPUs; 1 when the step
 * is small), each scoring its share with the panel kernel. */
static int coarse(struct ivs *s, uint32_t asked)
{
    size_t nl = s->x->v.nlist, step = SCORE_FLOATS / nl ? SCORE_FLOATS / nl : 1;
    unsigned n = asked ? asked : cl_cpus();
    struct cworker *w;
    size_t share;
    int rc = 0;

    if (n > CL_THREADS_MAX)
        n = CL_THREADS_MAX;
    if ((double)s->n * (double)nl * (double)s->dim < 4e6)
        n = 1;
    if (n > (s->n + 7) / 8)
        n = (unsigned)((s->n + 7) / 8); /* at least 8 queries a thread */
    share = (s->n + n - 1) / n;
    step = step < share ? step : share;
    if (!(w = calloc(n, sizeof(*w))))
        return ec_seterr(EC_ENOMEM, "approximate search: %u threads", n);
    for (unsigned i = 0; i < n; i++) {
        w[i].s = s;
        cl_share(s->n, n, i, &w[i].q0, &w[i].q1);
        w[i].step = step;
        w[i].C = malloc(step * nl * sizeof(float));
        w[i].h = malloc(s->nprobe * sizeof(struct hent));
        if (!w[i].C || !w[i].h) {
            rc = ec_seterr(EC_ENOMEM, "scores of %zu queries against %zu centroids", step, nl);
            goto out;
        }
    }
    cl_run_parallel(n, w, sizeof(*w), coarse_worker);
out:
    for (unsigned i = 0; i < n; i++) {
        free(w[i].C);
        free(w[i].h);
    }
    free(w);
    return rc;
}

/* The queries of each list (a counting sort of the probes: queries in
 * increasing order within a list), and the lists probed at all. */
static int invert(struct ivs *s)
{
    uint32_t nl = s->x->v.nlist;
    uint32_t *cur = malloc(nl * sizeof(uint32_t));

    if (!cur)
        return ec_seterr(EC_ENOMEM, "cursors of %u lists", nl);
    memset(s->qstart, 0, (nl + 1) * sizeof(uint32_t));
    for (size_t i = 0; i < s->n * s->nprobe; i++)
        s->qstart[s->probe[i] + 1]++;
    s->nactive = 0;
    for (uint32_t l = 0; l < nl; l++) {
        if (s->qstart[l + 1] && s->x->v.offsets[l + 1] > s->x->v.offsets[l])
            s->active[s->nactive++] = l;
        s->qstart[l + 1] += s->qstart[l];
    }
    memcpy(cur, s->qstart, nl * sizeof(uint32_t));
    for (size_t q = 0; q < s->n; q++)
        for (uint32_t j = 0; j < s->nprobe; j++)
            s->qlist[cur[s->probe[q * s->nprobe + j]]++] = (uint32_t)q;
    free(cur);
    return 0;
}

/* Offer the scores C[i * m + r] of the m entries of the index from base
 * on to the heaps of the list's queries qs[0..nql); a dynamic table's: only
 * the entries keep (of the index, NULL: all) says. */
static void commit(struct ivs *s, struct iworker *w, const float *C, size_t m, uint64_t base,
                   const uint32_t *qs, size_t nql, const atomic_uchar *keep)
{
    const int64_t *ids = s->x->v.ids + base;
    const float *norms = s->x->v.norms + base;
    bool l2 = s->metric == EC_METRIC_L2;
    float kb[16];

    if (keep)
        keep += base;
    for (size_t i = 0; i < nql; i++) {
        uint32_t q = qs[i];
        struct hent *h = w->hp.heap + q * s->kp;
        const float *c = C + i * m;
        float t = w->hp.thr[q];

        for (size_t r0 = 0; r0 < m; r0 += 16) {
            size_t n = m - r0 < 16 ? m - r0 : 16;
            float mx = -INFINITY;
            for (size_t j = 0; j < n; j++) {
                float key = l2 ? 2.0f * c[r0 + j] - norms[r0 + j] : c[r0 + j];
                kb[j] = key == key ? key : -INFINITY;
                mx = kb[j] > mx ? kb[j] : mx;
            }
            /* A heap that is not full (threshold -INFINITY) takes anything. */
            if (mx < t)
                continue;
            for (size_t j = 0; j < n; j++) {
                if (kb[j] < t ||
                    (keep && !atomic_load_explicit(&keep[r0 + j], memory_order_relaxed)))
                    continue;
                cl_search_heap_offer(h, &w->hp.hn[q], s->kp, &w->hp.thr[q], kb[j], ids[r0 + j]);
                t = w->hp.thr[q];
            }
        }
    }
}

/* The rows of a sub-block of a list probed by nql queries: as many as fit
 * SCORE_FLOATS scores, at least 64; CL_PANEL_ROWS when they are packed for the
 * panel kernel (QCHUNK * CL_PANEL_ROWS is SCORE_FLOATS). */
static size_t sub_rows(size_t nql, size_t dim)
{
    if (cl_panel_pays(nql, dim))
        return CL_PANEL_ROWS;
    return SCORE_FLOATS / nql > 64 ? SCORE_FLOATS / nql : 64;
}

/* Score every row of list l against the queries that probe it (a dynamic
 * table's: the rows written since the build that lie in it first). */
static int scan_list(struct ivs *s, struct iworker *w, uint32_t l)
{
    const ec_ivf_view *v = &s->x->v;
    uint64_t base = v->offsets[l], m = v->offsets[l + 1] - base;
    const uint32_t *qs = s->qlist + s->qstart[l];
    size_t nql = s->qstart[l + 1] - s->qstart[l];
    size_t sub = sub_rows(nql, s->dim);
    const atomic_uchar *keep = NULL;
    int rc;

    for (size_t i = 0; i < nql; i++)
        memcpy(w->Qb + i * s->dim, s->q + (size_t)qs[i] * s->dim, s->dim * sizeof(float));
    if (s->dyn) {
        if ((rc = cl_dynivf_delta_list(s->dyn, s->dp, l, w->Qb, &w->hp, &w->ds)))
            return rc;
        keep = cl_dynivf_list_keep(s->dyn, l, v->ids, base, base + m);
    }
    for (uint64_t r0 = 0; r0 < m; r0 += sub) {
        size_t mm = (size_t)(m - r0 < sub ? m - r0 : sub);
        const float *X = v->vectors + (base + r0) * s->dim;
        if (cl_panel_pays(nql, s->dim)) {
            cl_panel_pack(X, mm, s->dim, w->P);
            cl_panel_dots(w->Qb, nql, s->dim, w->P, mm, w->C, mm);
        } else {
            cl_search_dots(w->Qb, nql, X, mm, s->dim, w->C, mm, NULL);
        }
        commit(s, w, w->C, mm, base + r0, qs, nql, keep);
    }
    return 0;
}

static void *scan_worker(void *arg)
{
    struct iworker *w = arg;
    struct ivs *s = w->s;

    while (!atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        uint32_t i = atomic_fetch_add_explicit(&s->next, 1, memory_order_relaxed);
        int rc;
        if (i >= s->nactive)
            break;
        if ((rc = scan_list(s, w, s->active[i]))) {
            cl_terr_set(&w->err, rc, &s->failed);
            break;
        }
    }
    return NULL;
}

/* The answers of this thread's share of the queries: each query's
 * candidates merged from every thread's heaps into thread 0's (the other
 * threads' shares touch other queries), then scored again. */
static void *finish_worker(void *arg)
{
    struct iworker *w = arg, *w0;
    struct ivs *s = w->s;
    size_t q0, q1;
    int rc = 0;

    cl_share(s->n, s->nthreads, w->idx, &q0, &q1);
    w0 = &s->w[0];
    for (size_t q = q0; q < q1 && rc == 0; q++) {
        for (unsigned i = 1; i < s->nthreads; i++)
            cl_heaps_merge(&w0->hp, &s->w[i].hp, q, s->kp);
        rc = s->dyn ? cl_dynivf_finish(s->dyn, &w->ds, s->metric, s->raw_q + q * s->dim,
                                       s->dim, w0->hp.heap + q * s->kp, w0->hp.hn[q], s->k,
                                       s->scores + q * s->k, s->ids + q * s->k)
                    : cl_search_finish(&w->f, s->raw_q + q * s->dim, w0->hp.heap + q * s->kp,
                                       w0->hp.hn[q], s->scores + q * s->k, s->ids + q * s->k);
    }
    if (rc)
        cl_terr_set(&w->err, rc, &s->failed);
    return NULL;
}

static int iworker_alloc(struct ivs *s, struct iworker *w)
{
    struct cl_finish *f = &w->f;
    int rc;

    w->s = s;
    w->hp.heap = malloc(s->n * s->kp * sizeof(*w->hp.heap));
    w->hp.hn = calloc(s->n, sizeof(*w->hp.hn));
    w->hp.thr = malloc(s->n * sizeof(*w->hp.thr));
    w->Qb = malloc(s->n * s->dim * sizeof(float));
    w->C = malloc(s->cfloats * sizeof(float));
    w->P = malloc(cl_panel_floats(CL_PANEL_ROWS, s->dim) * sizeof(float));
    if (!w->hp.heap || !w->hp.hn || !w->hp.thr || !w->Qb || !w->C || !w->P)
        return ec_seterr(EC_ENOMEM, "approximate search scratch of thread %u (%zu queries, "
                                    "%zu candidates each)", w->idx, s->n, s->kp);
    for (size_t q = 0; q < s->n; q++)
        w->hp.thr[q] = -INFINITY;
    if (s->x->keyed)
        return cl_dynscratch_alloc(&w->ds, s->t, s->kp);
    f->t = s->t;
    f->metric = s->metric;
    f->dtype = (ec_dtype)s->t->t.dtype;
    f->dim = s->dim;
    f->k = s->k;
    f->rpp = s->kp;
    f->ids = malloc(s->kp * sizeof(int64_t));
    f->buf = malloc(s->kp * s->dim * sizeof(float));
    f->raw = malloc(s->kp * s->t->t.row_bytes + 1);
    f->cd = malloc(s->kp * sizeof(struct cand));
    rc = !f->ids || !f->buf || !f->raw || !f->cd
             ? ec_seterr(EC_ENOMEM, "approximate search: %zu candidates", s->kp)
             : 0;
    return rc;
}

static void iworker_free(struct iworker *w)
{
    free(w->hp.heap);
    free(w->hp.hn);
    free(w->hp.thr);
    free(w->Qb);
    free(w->C);
    free(w->P);
    cl_dynscratch_free(&w->ds);
    free(w->f.ids);
    free(w->f.buf);
    free(w->f.raw);
    free(w->f.cd);
}

/* fn on every worker (cl_run_parallel); the first error any met, with its
 * message, or 0. */
static int run_all(struct ivs *s, void *(*fn)(void *))
{
    cl_run_parallel(s->nthreads, s->w, sizeof(*s->w), fn);
    return cl_terr_first(&s->w[0].err, sizeof(*s->w), s->nthreads);
}

/* Threads for this chunk: what was asked (0: the CPUs), no more than the
 * lists to scan, and 1 when the scan is small. Sets s->cfloats, the score
 * buffer the largest sub-block needs (a search of a few short lists does
 * not allocate SCORE_FLOATS). */
static unsigned chunk_threads(struct ivs *s, uint32_t asked)
{
    const ec_ivf_view *v = &s->x->v;
    double work = 0;
    unsigned n = asked ? asked : cl_cpus();

    s->cfloats = 1;
    for (uint32_t i = 0; i < s->nactive; i++) {
        uint32_t l = s->active[i];
        size_t m = (size_t)(v->offsets[l + 1] - v->offsets[l]);
        size_t nql = s->qstart[l + 1] - s->qstart[l], sub = sub_rows(nql, s->dim);
        work += (double)m * (double)nql;
        if (nql * (m < sub ? m : sub) > s->cfloats)
            s->cfloats = nql * (m < sub ? m : sub);
    }
    work *= (double)s->dim;
    if (n > CL_THREADS_MAX)
        n = CL_THREADS_MAX;
    if (n > s->nactive)
        n = s->nactive;
    if (work < 4e6)
        n = 1;
    return n ? n : 1;
}

/* Queries [0, s->n) of the chunk (s->q; as given: s->raw_q), answers at
 * s->scores and s->ids. */
static int search_chunk(struct ivs *s, uint32_t threads)
{
    struct cl_dynivf dv = {0};
    struct cl_dynprobe dp;
    int rc;

    if ((rc = coarse(s, threads)) || (rc = invert(s)))
        return rc;
    s->dyn = NULL;
    s->nthreads = chunk_threads(s, threads);
    atomic_store_explicit(&s->next, 0, memory_order_relaxed);
    atomic_store_explicit(&s->failed, 0, memory_order_relaxed);
    if (!(s->w = calloc(s->nthreads, sizeof(*s->w))))
        return ec_seterr(EC_ENOMEM, "approximate search: %u threads", s->nthreads);
    for (unsigned i = 0; i < s->nthreads; i++) {
        s->w[i].idx = i;
        if ((rc = iworker_alloc(s, &s->w[i])))
            goto out;
    }
    /* A dynamic table: the snapshot of its delta; each list's share of it
     * is offered with the list, and the lists' keys are checked against the
     * table (client_dynivf.c). */
    if (s->x->keyed) {
        dp = (struct cl_dynprobe){
            .q = s->q, .nq = s->n, .dim = s->dim, .kp = s->kp, .metric = s->metric,
            .nlist = s->x->v.nlist, .cnorms = s->x->cnorms, .cpanel = s->x->cpanel,
            .rows = s->x->v.rows, .qstart = s->qstart, .qlist = s->qlist,
        };
        s->dp = &dp;
        s->dyn = &dv;
        if ((rc = cl_dynivf_begin(&dv, s->t, s->x->v.h->built_lsn, &s->x->delta, &dp,
                                  &s->w[0].ds)))
            goto out;
    }
    if ((rc = run_all(s, scan_worker)) || (rc = run_all(s, finish_worker)))
        goto out;
    if (s->dyn)
        rc = cl_dynivf_end(s->dyn);
out:
    if (s->dyn)
        cl_dynivf_free(s->dyn);
    s->dyn = NULL;
    for (unsigned i = 0; i < s->nthreads; i++)
        iworker_free(&s->w[i]);
    free(s->w);
    s->w = NULL;
    return rc;
}

int cl_ivf_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                  ec_metric metric, const ec_search_opts *opts, float *scores, int64_t *ids)
{
    struct ivs s = {0};
    struct cl_ivf *x;
    size_t chunk = nq < QCHUNK ? nq : QCHUNK, slack = k / 4 < 8 ? 8 : k / 4 > 64 ? 64 : k / 4;
    float *qs = NULL;
    int rc;

    if ((rc = ivf_get(t, &x)))
        return rc;
    if (x->v.metric != metric)
        return ec_seterr(EC_EINVAL, "the index of tensor '%s' of model '%s' version %lld was "
                                    "built for metric %s, and this search asks for %s: search "
                                    "with metric %s, or build the index again with --metric "
                                    "%s", t->t.name, t->t.model, (long long)t->t.version,
                         ec_metric_name(x->v.metric), ec_metric_name(metric),
                         ec_metric_name(x->v.metric), ec_metric_name(metric));
    s.x = x;
    s.t = t;
    s.metric = metric;
    s.dim = dim;
    s.k = k;
    s.nprobe = opts->nprobe < x->v.nlist ? opts->nprobe : x->v.nlist;
    /* k and a few more, as exact search keeps: room for rows whose float
     * scores and exact scores rank differently. */
    s.kp = x->v.rows <= slack || k > x->v.rows - slack ? (size_t)x->v.rows : k + slack;
    if (x->keyed)
        s.kp = k + slack; /* the table has more rows than the index, or fewer */
    if (chunk > SIZE_MAX / sizeof(uint32_t) / s.nprobe ||
        !(qs = malloc(chunk * dim * sizeof(float))) ||
        !(s.probe = malloc(chunk * s.nprobe * sizeof(uint32_t))) ||
        !(s.qlist = malloc(chunk * s.nprobe * sizeof(uint32_t))) ||
        !(s.qstart = malloc(((size_t)x->v.nlist + 1) * sizeof(uint32_t))) ||
        !(s.active = malloc(x->v.nlist * sizeof(uint32_t)))) {
        rc = ec_seterr(EC_ENOMEM, "approximate search: %zu queries probing %u lists each",
                       chunk, s.nprobe);
        goto out;
    }
    s.q = qs;
    for (size_t q0 = 0; q0 < nq && rc == 0; q0 += chunk) {
        s.n = nq - q0 < chunk ? nq - q0 : chunk;
        /* The queries as scored: unit length for cosine (the index's rows
         * are of unit length too: the key is the cosine). */
        for (size_t q = 0; q < s.n; q++) {
            const float *src = queries + (q0 + q) * dim;
            double n2 = 0;
            for (size_t j = 0; j < dim; j++)
                n2 += (double)src[j] * src[j];
            for (size_t j = 0; j < dim; j++)
                qs[q * dim + j] = metric == EC_METRIC_COSINE ? (float)(src[j] / sqrt(n2))
                                                             : src[j];
        }
        s.raw_q = queries + q0 * dim;
        s.scores = scores + q0 * k;
        s.ids = ids + q0 * k;
        rc = search_chunk(&s, opts->threads);
    }
out:
    free(s.active);
    free(s.qstart);
    free(s.qlist);
    free(s.probe);
    free(qs);
    return rc;
}
