/*
 * client_dynsearch.c - exact top-k search over a dynamic table
 * (ec_search on a tensor made dynamic; include/embcache_dynamic.h).
 *
 * A dynamic table has no partitions: its rows are slots of its extent,
 * each live one holding a key and a row (shm/dyntable.h). The search's
 * threads claim runs of CLAIM slots; each reads the live slots of its runs
 * consistently (a slot rewritten under the copy is read again, one whose
 * key moved to a newer slot is skipped) into blocks of BLOCK rows, scores
 * a block with exact search's kernels (cl_search_dots for few queries; for
 * many, the block packed for the panel kernel, cl_panel_pays) against every
 * query, and keeps heaps of keys of its own. Then each thread takes a share
 * of the queries, merges their heaps and answers them through exact
 * search's last step (cl_search_finish): the candidates read again by key
 * and scored in double precision, equal scores in the order of their keys.
 * A key updated while the scan runs is scored with one of its rows, or
 * missed by that scan when its new slot was already passed; a key deleted
 * before the candidates are read again makes the search start over (at
 * most 3 times).
 *
 * Runs on the caller's thread and up to opts.threads - 1 more it starts and
 * joins (cl_run_parallel); reads shared memory only.
 */
#include "client/client_impl.h"
#include "client/search_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "shm/dyntable.h"
#include "shm/index.h"

/* Rows scored at once. */
#define BLOCK 1024u
/* Slots a thread claims at once. */
#define CLAIM 4096u

struct dsearch;

struct dworker {
    struct dsearch *s;
    unsigned idx;
    struct cl_heaps hp;         /* nq * kp */
    float *X, *P, *C, *norms;   /* a block: rows, packed, scores, norms */
    uint8_t *raw;               /* BLOCK rows as stored */
    int64_t *keys;              /* the block's */
    struct cl_finish f;         /* the finish's scratch */
    struct cl_terr err;         /* the error this thread met */
};

struct dsearch {
    ec_tensor *t;
    ec_dyn_view v;
    ec_metric metric;
    ec_dtype dt;
    size_t nq, dim, k, kp;
    bool panel;                 /* blocks packed for the panel kernel */
    const float *q;             /* the queries as scored (unit length for cosine) */
    const float *raw_q;         /* as given */
    float *scores;
    int64_t *ids;
    _Atomic uint64_t next;      /* the next run of slots to claim */
    _Atomic int failed;
    unsigned nthreads;
    struct dworker *w;
};

/* Score the m rows of w's block against every query into w's heaps. */
static void score_block(struct dsearch *s, struct dworker *w, size_t m)
{
    float *norms = s->metric == EC_METRIC_IP ? NULL : w->norms;

    if (s->panel) {
        cl_panel_pack(w->X, m, s->dim, w->P);
        cl_panel_dots(s->q, s->nq, s->dim, w->P, m, w->C, m);
        if (norms)
            cl_search_dots(NULL, 0, w->X, m, s->dim, NULL, 0, norms);
    } else {
        cl_search_dots(s->q, s->nq, w->X, m, s->dim, w->C, m, norms);
    }
    for (size_t q = 0; q < s->nq; q++)
        for (size_t r = 0; r < m; r++) {
            float c = w->C[q * m + r], key;
            if (s->metric == EC_METRIC_IP)
                key = c;
            else if (s->metric == EC_METRIC_COSINE)
                key = w->norms[r] > 0 ? c / sqrtf(w->norms[r]) : 0.0f;
            else
                key = 2.0f * c - w->norms[r];
            if (key != key)
                key = -INFINITY;
            if (w->hp.hn[q] == s->kp && key < w->hp.thr[q])
                continue;
            cl_search_heap_offer(w->hp.heap + q * s->kp, &w->hp.hn[q], s->kp, &w->hp.thr[q],
                                 key, w->keys[r]);
        }
}

/* Claim runs of slots until none is left or a thread failed. */
static void *scan_worker(void *arg)
{
    struct dworker *w = arg;
    struct dsearch *s = w->s;
    size_t m = 0;

    while (!atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        uint64_t s0 = atomic_fetch_add_explicit(&s->next, CLAIM, memory_order_relaxed);
        uint64_t s1 = s0 + CLAIM < s->v.nslots ? s0 + CLAIM : s->v.nslots;
        if (s0 >= s->v.nslots)
            break;
        for (uint64_t sl = s0; sl < s1; sl++) {
            int64_t key;
            int r = ec_dyn_slot_read(&s->v, sl, &key, w->raw);
            if (r < 0) {
                cl_terr_set(&w->err, r, &s->failed);
                return NULL;
            }
            if (r == 0)
                continue;
            cl_to_f32(w->X + m * s->dim, w->raw, s->dim, s->dt);
            w->keys[m++] = key;
            if (m == BLOCK) {
                score_block(s, w, m);
                m = 0;
            }
        }
    }
    if (m)
        score_block(s, w, m);
    return NULL;
}

/* This thread's share of the queries: heaps merged into thread 0's (the
 * other shares touch other queries), then answered. */
static void *finish_worker(void *arg)
{
    struct dworker *w = arg, *w0;
    struct dsearch *s = w->s;
    size_t q0, q1;
    int rc = 0;

    cl_share(s->nq, s->nthreads, w->idx, &q0, &q1);
    w0 = &s->w[0];
    for (size_t q = q0; q < q1 && rc == 0; q++) {
        for (unsigned i = 1; i < s->nthreads; i++)
            cl_heaps_merge(&w0->hp, &s->w[i].hp, q, s->kp);
        rc = cl_search_finish(&w->f, s->raw_q + q * s->dim, w0->hp.heap + q * s->kp,
                              w0->hp.hn[q], s->scores + q * s->k, s->ids + q * s->k);
    }
    if (rc)
        cl_terr_set(&w->err, rc, &s->failed);
    return NULL;
}

static int dworker_alloc(struct dsearch *s, struct dworker *w)
{
    size_t rb = s->t->t.row_bytes;

    w->s = s;
    w->hp.heap = malloc(s->nq * s->kp * sizeof(*w->hp.heap));
    w->hp.hn = calloc(s->nq, sizeof(*w->hp.hn));
    w->hp.thr = malloc(s->nq * sizeof(*w->hp.thr));
    w->X = malloc((size_t)BLOCK * s->dim * sizeof(float));
    w->P = s->panel ? malloc(cl_panel_floats(BLOCK, s->dim) * sizeof(float)) : NULL;
    w->C = malloc(s->nq * BLOCK * sizeof(float));
    w->norms = malloc(BLOCK * sizeof(float));
    w->raw = malloc(rb * BLOCK);
    w->keys = malloc(BLOCK * sizeof(int64_t));
    w->f = (struct cl_finish){.t = s->t, .metric = s->metric, .dtype = s->dt, .dim = s->dim,
                              .k = s->k, .rpp = BLOCK};
    w->f.ids = malloc(BLOCK * sizeof(int64_t));
    w->f.buf = malloc((size_t)BLOCK * s->dim * sizeof(float));
    w->f.raw = w->raw;
    w->f.cd = malloc(s->kp * sizeof(struct cand));
    if (!w->hp.heap || !w->hp.hn || !w->hp.thr || !w->X || (s->panel && !w->P) || !w->C ||
        !w->norms || !w->raw || !w->keys || !w->f.ids || !w->f.buf || !w->f.cd)
        return ec_seterr(EC_ENOMEM, "search of dynamic table '%s': scratch of thread %u for "
                                    "%zu queries", s->t->t.name, w->idx, s->nq);
    for (size_t q = 0; q < s->nq; q++)
        w->hp.thr[q] = -INFINITY;
    return 0;
}

static void dworker_free(struct dworker *w)
{
    free(w->hp.heap);
    free(w->hp.hn);
    free(w->hp.thr);
    free(w->X);
    free(w->P);
    free(w->C);
    free(w->norms);
    free(w->raw);
    free(w->keys);
    free(w->f.ids);
    free(w->f.buf);
    free(w->f.cd);
}

/* fn on every worker; the first error any met, with its message, or 0. */
static int run_all(struct dsearch *s, void *(*fn)(void *))
{
    cl_run_parallel(s->nthreads, s->w, sizeof(*s->w), fn);
    return cl_terr_first(&s->w[0].err, sizeof(*s->w), s->nthreads);
}

static int dyn_search_once(ec_tensor *t, const float *queries, size_t nq, size_t dim,
                           size_t k, ec_metric metric, uint32_t threads, float *scores,
                           int64_t *ids)
{
    const ec_segment *seg = &t->c->seg;
    struct dsearch s = {0};
    ec_index_ref ref;
    float *qs = NULL;
    uint64_t live;
    unsigned n;
    int rc;

    if (!ec_index_lookup(seg, t->t.id, EC_DYN_PART, &ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' is not served any more: resolve it "
                                    "again", t->t.name);
    if ((rc = ec_dyn_view_open(seg, ref.offset, t->t.id, t->t.row_bytes, &s.v)))
        return rc;
    s.t = t;
    s.metric = metric;
    s.dt = (ec_dtype)t->t.dtype;
    s.nq = nq;
    s.dim = dim;
    s.k = k;
    s.panel = cl_panel_pays(nq, dim);
    s.raw_q = queries;
    s.scores = scores;
    s.ids = ids;
    live = atomic_load_explicit(&s.v.hdr->live, memory_order_relaxed);
    {
        size_t slack = k / 4 < 8 ? 8 : k / 4 > 64 ? 64 : k / 4;
        s.kp = k + slack;
        if (s.kp > live + BLOCK)
            s.kp = (size_t)live + BLOCK; /* keys may come in during the scan */
    }
    /* Threads: what was asked (0: the CPUs), one per run of slots at most,
     * and one for a small search. */
    n = threads ? threads : cl_cpus();
    if (n > CL_THREADS_MAX)
        n = CL_THREADS_MAX;
    if (n > (s.v.nslots + CLAIM - 1) / CLAIM)
        n = (unsigned)((s.v.nslots + CLAIM - 1) / CLAIM);
    if ((double)s.v.nslots * (double)dim * (double)nq < 4e6 || n == 0)
        n = 1;
    s.nthreads = n;
    if (!(qs = malloc(nq * dim * sizeof(*qs))) || !(s.w = calloc(n, sizeof(*s.w)))) {
        rc = ec_seterr(EC_ENOMEM, "search of dynamic table '%s': %zu queries", t->t.name, nq);
        goto out;
    }
    for (size_t q = 0; q < nq; q++) {
        double n2 = 0;
        for (size_t j = 0; j < dim; j++)
            n2 += (double)queries[q * dim + j] * queries[q * dim + j];
        for (size_t j = 0; j < dim; j++)
            qs[q * dim + j] = metric == EC_METRIC_COSINE ? (float)(queries[q * dim + j] /
                                                                   sqrt(n2))
                                                         : queries[q * dim + j];
    }
    s.q = qs;
    for (unsigned i = 0; i < n; i++) {
        s.w[i].idx = i;
        if ((rc = dworker_alloc(&s, &s.w[i])))
            goto out;
    }
    if ((rc = run_all(&s, scan_worker)))
        goto out;
    if (!ec_index_still_valid(&ref)) {
        rc = ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped or rebuilt during the "
                                  "search: resolve it again", t->t.name);
        goto out;
    }
    rc = run_all(&s, finish_worker);
out:
    for (unsigned i = 0; s.w && i < s.nthreads; i++)
        dworker_free(&s.w[i]);
    free(s.w);
    free(qs);
    return rc;
}

int cl_dyn_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                  ec_metric metric, uint32_t threads, float *scores, int64_t *ids)
{
    int rc = EC_ENOENT;

    for (int tries = 0; tries < 3 && rc == EC_ENOENT; tries++)
        rc = dyn_search_once(t, queries, nq, dim, k, metric, threads, scores, ids);
    return rc;
}
