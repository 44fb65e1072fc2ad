/*
 * client_search.c - ec_search(): exact top-k by inner product, cosine or
 * squared L2 over a cached 2-D tensor, computed in the calling process over
 * its read-only mapping of the segment (include/embcache_search.h).
 *
 * Runs on the caller's thread and on up to opts.threads - 1 threads it
 * starts and joins; never writes the segment, never holds the client's lock
 * but inside the fault and gather calls it shares with gathers.
 *
 * The scan. The tensor is cut into blocks of rows_per_partition rows, one
 * per partition. A block comes (block_get) either
 *   - straight from the segment: the partition's index entry is looked up
 *     and its rows are scored where they lie (f32), or converted to f32 into
 *     the thread's scratch (f16, bf16) and the entry checked right after; or
 *   - through the gather path (cl_gather_host) into the thread's scratch:
 *     for tensors cached by rows, and for a partition that kept missing or
 *     moving after SCAN_DIRECT_TRIES tries. A gather is always consistent.
 * Each block is scored in sub-blocks of at most `sub` rows into C[nq][sub]
 * (score_sub: the vector kernel below, or, for queries enough that packing
 * pays (cl_panel_pays), the sub-block packed for the panel kernel of
 * client/search_panel.c), and only then committed to the heaps (commit).
 * Both kernels give a row the same score wherever it lies (each row's
 * products are summed in one fixed order), so equal rows tie exactly and
 * the heaps keep the smaller ids. Invariants:
 *   1. Scores reach a heap only from rows whose copy or in-place read was
 *      validated after the scores were computed: a scan that read a torn or
 *      reused extent throws its scores away and reads the rest of the block
 *      again (from the first row not yet committed, so no row is ever
 *      committed twice).
 *   2. Every row of the tensor is committed exactly once per query.
 *   3. A heap holds the kp best (key, id) pairs seen, worst at its root,
 *      "better" meaning a higher key, then a smaller id. Keys are "higher is
 *      better" for every metric (L2: 2 q.x - |x|^2, the negated distance less
 *      |q|^2) and a NaN key is -INFINITY.
 *
 * Threads. Every thread claims partitions from a shared counter and scores
 * them into heaps of its own, merged at the end. No library thread pool
 * runs beside them: OpenBLAS's, which this search used for many queries,
 * spins after each product and took cores from the heaps; the panel kernel
 * on each thread is also faster than OpenBLAS 0.3.21's sgemm on one
 * (bench/panelbench.c).
 *
 * The answer. The kp = k + slack candidates per query are gathered once more
 * (cl_gather_host) and scored again in double precision, then sorted by
 * (score, id): the scores returned do not depend on which kernel found them,
 * and rows with equal scores come out in the order of their ids.
 *
 * A search with opts.nprobe > 0 goes to the IVF index (client/client_ivf.c)
 * once its arguments are checked here; it borrows the kernel, the heap and
 * the final scoring above through client/search_impl.h.
 */
#include <math.h>

#include "client/client_impl.h"
#include "client/search_impl.h"

/* Direct reads of a partition before the scan takes it through a gather. */
#define SCAN_DIRECT_TRIES 8
/* Floats of one thread's score buffer C, at most (16 MiB). */
#define SCORE_BUF_FLOATS ((size_t)4 << 20)

/* The kernels are compiled for AVX-512, AVX2+FMA and the baseline; the
 * loader picks one for the CPU it runs on. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define EC_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", \
                                                    "default")))
#else
#define EC_SIMD_CLONES
#endif

struct search;

struct worker {
    struct search *s;
    unsigned idx;
    struct hent *heap;   /* nq * kp: this thread's heaps */
    uint32_t *hn;        /* nq: entries in each heap */
    float *thr;          /* nq: key a row must reach to enter (-INF: not full) */
    float *buf;          /* rpp * dim: a block in f32 (converted or gathered) */
    uint8_t *raw;        /* rpp * row_bytes: a gathered block of f16/bf16 */
    int64_t *ids;        /* rpp: the ids of a gathered block */
    float *C;            /* nq * sub: scores of a sub-block */
    float *norms;        /* sub: |x|^2 of each row (cosine, L2) */
    float *P;            /* sub rows packed for the panel kernel (panel) */
    struct cl_terr err;
};

struct search {
    ec_tensor *t;
    ec_client *c;
    ec_metric metric;
    ec_dtype dtype;
    size_t nq, dim, k, kp, sub;
    uint64_t rows, rpp, parts, row_bytes;
    const float *q;      /* the queries as scored (unit length for cosine) */
    bool panel;          /* score with the panel kernel (cl_panel_pays) */
    unsigned nthreads;   /* threads at work */
    unsigned nalloc;     /* workers allocated (>= nthreads) */
    struct worker *w;
    _Atomic uint64_t next_part;
    _Atomic int failed;
};

const char *ec_metric_name(ec_metric m)
{
    switch (m) {
    case EC_METRIC_IP: return "ip";
    case EC_METRIC_COSINE: return "cosine";
    case EC_METRIC_L2: return "l2";
    default: return NULL;
    }
}

/* ------------------------------------------------------------------ */
/* Kernels                                                             */

/* C[q * ldc + r] = Q[q] . X[r] for r < m, and norms[r] = X[r] . X[r] when
 * norms is not NULL. Rows go four at a time through one instruction
 * sequence (the last group repeats its last row), so equal rows get equal
 * scores whatever their place. */
EC_SIMD_CLONES
static void dots_vec(const float *restrict Q, size_t nq, const float *restrict X, size_t m,
                     size_t dim, float *restrict C, size_t ldc, float *restrict norms)
{
    for (size_t r = 0; r < m; r += 4) {
        const float *x0 = X + r * dim;
        const float *x1 = r + 1 < m ? x0 + dim : x0;
        const float *x2 = r + 2 < m ? x0 + 2 * dim : x1;
        const float *x3 = r + 3 < m ? x0 + 3 * dim : x2;
        size_t left = m - r < 4 ? m - r : 4;

        for (size_t q = 0; q <= nq; q++) {
            const float *qq = q < nq ? Q + q * dim : NULL;
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0, o[4];

            if (q == nq) {
                if (!norms)
                    break;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                for (size_t j = 0; j < dim; j++) {
                    s0 += x0[j] * x0[j];
                    s1 += x1[j] * x1[j];
                    s2 += x2[j] * x2[j];
                    s3 += x3[j] * x3[j];
                }
            } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                for (size_t j = 0; j < dim; j++) {
                    float v = qq[j];
                    s0 += v * x0[j];
                    s1 += v * x1[j];
                    s2 += v * x2[j];
                    s3 += v * x3[j];
                }
            }
            o[0] = s0, o[1] = s1, o[2] = s2, o[3] = s3;
            for (size_t i = 0; i < left; i++) {
                if (q == nq)
                    norms[r + i] = o[i];
                else
                    C[q * ldc + r + i] = o[i];
            }
        }
    }
}

/* norms[r] = X[r] . X[r] (the panel path's, in the same order as dots_vec's). */
static void norms_of(const float *X, size_t m, size_t dim, float *norms)
{
    dots_vec(NULL, 0, X, m, dim, NULL, 0, norms);
}

void cl_search_dots(const float *Q, size_t nq, const float *X, size_t m, size_t dim, float *C,
                    size_t ldc, float *norms)
{
    dots_vec(Q, nq, X, m, dim, C, ldc, norms);
}

/* Score m rows X (f32, row after row) against every query into w->C
 * (C[q * m + r]) and, where the metric needs them, w->norms: |x|^2 (L2) or
 * 1 / |x| (cosine). */
static void score_sub(struct search *s, struct worker *w, const float *X, size_t m)
{
    float *norms = s->metric == EC_METRIC_IP ? NULL : w->norms;

    if (s->panel) {
        cl_panel_pack(X, m, s->dim, w->P);
        cl_panel_dots(s->q, s->nq, s->dim, w->P, m, w->C, m);
        if (norms)
            norms_of(X, m, s->dim, norms);
    } else {
        dots_vec(s->q, s->nq, X, m, s->dim, w->C, m, norms);
    }
    /* Cosine keys are q.x / |x| (q has unit length): commit multiplies. A
     * row of norm 0 scores 0. */
    if (s->metric == EC_METRIC_COSINE)
        for (size_t r = 0; r < m; r++)
            norms[r] = norms[r] > 0 ? 1.0f / sqrtf(norms[r]) : 0.0f;
}

/* ------------------------------------------------------------------ */
/* Heaps                                                               */

static inline bool better(float ka, int64_t ia, float kb, int64_t ib)
{
    return ka > kb || (ka == kb && ia < ib);
}

/* Offer (key, id) to heap h of n entries (capacity kp); updates n and *thr. */
static void heap_offer(struct hent *h, uint32_t *n, size_t kp, float *thr, float key,
                       int64_t id)
{
    size_t i;

    if (*n < kp) {
        i = (*n)++;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!better(h[p].key, h[p].id, key, id))
                break;
            h[i] = h[p];
            i = p;
        }
        h[i] = (struct hent){key, id};
        if (*n == kp)
            *thr = h[0].key;
        return;
    }
    if (!better(key, id, h[0].key, h[0].id))
        return;
    i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, worst = l;
        if (l >= kp)
            break;
        if (r < kp && better(h[l].key, h[l].id, h[r].key, h[r].id))
            worst = r;
        if (!better(key, id, h[worst].key, h[worst].id))
            break;
        h[i] = h[worst];
        i = worst;
    }
    h[i] = (struct hent){key, id};
    *thr = h[0].key;
}

void cl_search_heap_offer(struct hent *h, uint32_t *n, size_t kp, float *thr, float key,
                          int64_t id)
{
    heap_offer(h, n, kp, thr, key, id);
}

/* The keys of rows [r0, r0 + 16) of one query's scores c: 1 if one of them
 * may enter a heap whose threshold is t (a NaN key may: it enters as
 * -INFINITY while the heap is not full). aux: NULL (IP), each row's
 * 1 / |x| (cosine) or |x|^2 (L2). */
static inline int keys16(ec_metric metric, const float *restrict c,
                         const float *restrict aux, float t, float *restrict kb)
{
    int hit = 0;

    if (metric == EC_METRIC_IP) {
        for (int i = 0; i < 16; i++)
            kb[i] = c[i];
    } else if (metric == EC_METRIC_COSINE) {
        for (int i = 0; i < 16; i++)
            kb[i] = c[i] * aux[i];
    } else {
        for (int i = 0; i < 16; i++)
            kb[i] = 2.0f * c[i] - aux[i];
    }
    for (int i = 0; i < 16; i++)
        hit |= !(kb[i] < t);
    return hit;
}

/* The last n < 16 scores *c (and *aux) copied into ct (at), padded with
 * keys that never enter; *c and *aux then point there. */
static inline void pad16(ec_metric metric, const float **c, const float **aux, size_t n,
                         float *ct, float *at)
{
    for (size_t i = 0; i < 16; i++) {
        ct[i] = i < n ? (*c)[i] : metric == EC_METRIC_IP ? -INFINITY : 0.0f;
        at[i] = !*aux ? 0.0f : i < n ? (*aux)[i] : metric == EC_METRIC_L2 ? INFINITY : 0.0f;
    }
    *c = ct;
    *aux = *aux ? at : NULL;
}

/* Commit the scores of rows [row0, row0 + m) in C for queries [q0, q1):
 * sixteen rows at a time are checked against the heap's threshold with
 * vector instructions, and only a group where one may enter is offered
 * row by row. norms: as keys16's aux (score_sub turned |x|^2 into 1 / |x|
 * for cosine). */
EC_SIMD_CLONES
static void commit(struct search *s, const float *C, const float *norms, size_t m,
                   int64_t row0, size_t q0, size_t q1, struct hent *heap, uint32_t *hn,
                   float *thr)
{
    const float *aux = s->metric == EC_METRIC_IP ? NULL : norms;
    float kb[16], ct[16], at[16];

    for (size_t q = q0; q < q1; q++) {
        const float *c = C + q * m;
        struct hent *h = heap + q * s->kp;
        float t = thr[q];

        for (size_t r0 = 0; r0 < m; r0 += 16) {
            size_t n = m - r0 < 16 ? m - r0 : 16;
            const float *cc = c + r0, *aa = aux ? aux + r0 : NULL;

            if (n < 16)
                pad16(s->metric, &cc, &aa, n, ct, at);
            if (!keys16(s->metric, cc, aa, t, kb))
                continue;
            for (size_t i = 0; i < n; i++) {
                float key = kb[i];
                int64_t id = row0 + (int64_t)(r0 + i);
                if (key != key)
                    key = -INFINITY;
                if (key < t)
                    continue;
                heap_offer(h, &hn[q], s->kp, &thr[q], key, id);
                t = thr[q];
            }
        }
    }
}

/* ------------------------------------------------------------------ */
/* Blocks                                                              */

struct block {
    const float *x;      /* n rows of f32 */
    size_t n;
    int64_t row0;
    ec_index_ref ref;
    bool direct;         /* x is in the segment: check ref after reading it */
};

static void to_f32(float *dst, const uint8_t *src, size_t n, ec_dtype dt)
{
    const uint16_t *h = (const uint16_t *)(const void *)src;

    if (dt == EC_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
    } else if (dt == EC_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, h + i, sizeof(v));
            dst[i] = ec_bf16_to_f32(v);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            uint16_t v;
            memcpy(&v, h + i, sizeof(v));
            dst[i] = ec_f16_to_f32(v);
        }
    }
}

void cl_to_f32(float *dst, const uint8_t *src, size_t n, ec_dtype dt)
{
    to_f32(dst, src, n, dt);
}

/* Rows [row0, row0 + n) through the gather path, into w->buf as f32. */
static int block_gather(struct search *s, struct worker *w, int64_t row0, size_t n,
                        struct block *b)
{
    int rc;

    for (size_t i = 0; i < n; i++)
        w->ids[i] = row0 + (int64_t)i;
    if (s->dtype == EC_DTYPE_F32) {
        rc = cl_gather_host(s->t, w->ids, n, w->buf, s->dtype);
    } else {
        rc = cl_gather_host(s->t, w->ids, n, w->raw, s->dtype);
        if (rc == 0)
            to_f32(w->buf, w->raw, n * s->dim, s->dtype);
    }
    if (rc)
        return rc;
    b->x = w->buf;
    b->direct = false;
    return 0;
}

/* Rows [row0 + from, row0 + n) of partition p: in place when resident and
 * f32, converted into w->buf when f16/bf16, else gathered (tensors cached by
 * rows, or after `tries` direct attempts failed). b->x points at row
 * `from` of the partition. */
static int block_get(struct search *s, struct worker *w, uint64_t p, size_t from, int tries,
                     struct block *b)
{
    ec_tensor *t = s->t;
    const ec_segment *seg = &s->c->seg;
    int64_t row0 = (int64_t)(p * s->rpp);
    size_t n = (size_t)(s->rows - p * s->rpp < s->rpp ? s->rows - p * s->rpp : s->rpp);
    int rc;

    b->row0 = row0 + (int64_t)from;
    b->n = n - from;
    for (; tries < SCAN_DIRECT_TRIES; tries++) {
        uint32_t part = (uint32_t)p;

        if (atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_ROWS)
            break;
        if (ec_index_lookup(seg, t->t.id, part, &b->ref) &&
            (uint64_t)b->ref.length >= n * s->row_bytes) {
            const uint8_t *src = seg->data + b->ref.offset + from * s->row_bytes;
            cl_note_accesses(s->c, &b->ref, 1);
            if (s->dtype == EC_DTYPE_F32 && ((uintptr_t)src & 3) == 0) {
                b->x = (const float *)(const void *)src;
                b->direct = true;
                return 0;
            }
            to_f32(w->buf, src, b->n * s->dim, s->dtype);
            if (ec_index_still_valid(&b->ref)) {
                b->x = w->buf;
                b->direct = false;
                return 0;
            }
            continue;
        }
        if ((rc = cl_fault(t, &part, 1)))
            return rc;
    }
    return block_gather(s, w, b->row0, b->n, b);
}

/* Scan partition p with worker w: score, check, commit, sub-block by
 * sub-block; a block that moved under the scan is read again from its
 * first row not committed (invariants 1 and 2). */
static int scan_part(struct search *s, struct worker *w, uint64_t p)
{
    size_t n = (size_t)(s->rows - p * s->rpp < s->rpp ? s->rows - p * s->rpp : s->rpp);
    size_t done = 0, base = 0; /* rows committed; the row b.x starts at */
    int64_t row0 = (int64_t)(p * s->rpp);
    int tries = 0, rc;
    struct block b;

    if ((rc = block_get(s, w, p, 0, 0, &b)))
        return rc;
    while (done < n) {
        size_t m = n - done < s->sub ? n - done : s->sub;

        score_sub(s, w, b.x + (done - base) * s->dim, m);
        if (b.direct && !ec_index_still_valid(&b.ref)) {
            if ((rc = block_get(s, w, p, done, ++tries, &b)))
                return rc;
            base = done;
            continue;
        }
        commit(s, w->C, w->norms, m, row0 + (int64_t)done, 0, s->nq, w->heap, w->hn, w->thr);
        done += m;
    }
    return 0;
}

/* ------------------------------------------------------------------ */
/* Threads                                                             */

/* Claim partitions until none is left or a thread failed. */
static void *vec_worker(void *arg)
{
    struct worker *w = arg;
    struct search *s = w->s;

    while (!atomic_load_explicit(&s->failed, memory_order_relaxed)) {
        uint64_t p = atomic_fetch_add_explicit(&s->next_part, 1, memory_order_relaxed);
        int rc;
        if (p >= s->parts)
            break;
        if ((rc = scan_part(s, w, p))) {
            cl_terr_set(&w->err, rc, &s->failed);
            break;
        }
    }
    return NULL;
}

static int worker_alloc(struct search *s, struct worker *w)
{
    size_t blk = (size_t)s->rpp;

    w->s = s;
    w->buf = malloc(blk * s->dim * sizeof(float));
    w->ids = malloc(blk * sizeof(int64_t));
    if (s->dtype != EC_DTYPE_F32)
        w->raw = malloc(blk * s->row_bytes);
    w->C = malloc(s->nq * s->sub * sizeof(float));
    w->norms = malloc(s->sub * sizeof(float));
    if (s->panel)
        w->P = malloc(cl_panel_floats(s->sub, s->dim) * sizeof(float));
    w->heap = malloc(s->nq * s->kp * sizeof(*w->heap));
    w->hn = calloc(s->nq, sizeof(*w->hn));
    w->thr = malloc(s->nq * sizeof(*w->thr));
    if (w->thr)
        for (size_t q = 0; q < s->nq; q++)
            w->thr[q] = -INFINITY;
    if (!w->buf || !w->ids || (s->dtype != EC_DTYPE_F32 && !w->raw) || !w->C || !w->norms ||
        (s->panel && !w->P) || !w->heap || !w->hn || !w->thr)
        return ec_seterr(EC_ENOMEM, "search scratch of thread %u (%zu queries, %zu results "
                                    "each, blocks of %zu rows)", w->idx, s->nq, s->kp, blk);
    return 0;
}

static void worker_free(struct worker *w)
{
    free(w->buf);
    free(w->ids);
    free(w->raw);
    free(w->C);
    free(w->norms);
    free(w->P);
    free(w->heap);
    free(w->hn);
    free(w->thr);
}

/* Fault in the partitions not resident, in one request, when the tensor
 * takes at most half the segment (a larger one is faulted partition by
 * partition as the scan reaches it, so it streams through memory). */
static int prefault(struct search *s)
{
    ec_tensor *t = s->t;
    uint32_t *miss;
    size_t n = 0;
    int rc;

    if (atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_ROWS ||
        s->rows * s->row_bytes > s->c->seg.data_size / 2)
        return 0;
    if (!(miss = malloc(s->parts * sizeof(*miss))))
        return ec_seterr(EC_ENOMEM, "search: %llu partition numbers",
                         (unsigned long long)s->parts);
    for (uint64_t p = 0; p < s->parts; p++) {
        ec_index_ref ref;
        if (!ec_index_lookup(&s->c->seg, t->t.id, (uint32_t)p, &ref))
            miss[n++] = (uint32_t)p;
    }
    rc = n ? cl_fault(t, miss, n) : 0;
    free(miss);
    return rc;
}

/* How many threads: what opts asks (0: the CPUs we may run on), no more than
 * there is work for, and 1 for a small search (threads cost more). */
static unsigned thread_count(const struct search *s, uint32_t asked)
{
    unsigned n = asked;
    double work = (double)s->rows * (double)s->dim * (double)s->nq;

    if (n == 0)
        n = cl_cpus();
    if (n > CL_THREADS_MAX)
        n = CL_THREADS_MAX;
    if (n > s->parts)
        n = (unsigned)s->parts;
    if (work < 4e6)
        n = 1;
    return n ? n : 1;
}

unsigned cl_cpus(void)
{
    cpu_set_t set;

    return sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0
               ? (unsigned)CPU_COUNT(&set) : 1;
}

void cl_run_parallel(unsigned n, void *arg, size_t size, void *(*fn)(void *))
{
    pthread_t th[CL_THREADS_MAX];
    unsigned started = 0;

    if (n > CL_THREADS_MAX)
        n = CL_THREADS_MAX;
    for (unsigned i = 1; i < n; i++) {
        if (pthread_create(&th[i], NULL, fn, (char *)arg + i * size))
            break;
        started++;
    }
    fn(arg);
    for (unsigned i = started + 1; i < n; i++)
        fn((char *)arg + i * size);
    for (unsigned i = 1; i <= started; i++)
        pthread_join(th[i], NULL);
}

/* ------------------------------------------------------------------ */
/* The answer                                                          */

int cl_search_cand_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    bool xn = isnan(x->score), yn = isnan(y->score);

    if (xn != yn)
        return xn ? 1 : -1;
    if (!xn && x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int id_cmp(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

double cl_search_exact(ec_metric metric, const float *query, double qn, const float *x,
                       size_t dim)
{
    double acc = 0, xn = 0;

    for (size_t j = 0; j < dim; j++) {
        if (metric == EC_METRIC_L2) {
            double d = (double)query[j] - x[j];
            acc += d * d;
        } else {
            acc += (double)query[j] * x[j];
            xn += (double)x[j] * x[j];
        }
    }
    if (metric == EC_METRIC_L2)
        acc = -acc;
    else if (metric == EC_METRIC_COSINE)
        acc = xn > 0 ? acc / (qn * sqrt(xn)) : (isnan(xn) ? NAN : 0.0);
    /* Compared as the float it is returned as: rows whose scores round to
     * the same float tie, and go by id. */
    return (double)(float)acc;
}

/* Score the candidates of query q again in double from the rows as stored
 * (gathered in chunks of rpp rows), sort them, and write its k results. */
int cl_search_finish(const struct cl_finish *f, const float *query, const struct hent *h,
                     uint32_t n, float *scores, int64_t *ids)
{
    struct cand *cd = f->cd;
    double qn = 0;
    int rc;

    for (uint32_t i = 0; i < n; i++)
        cd[i] = (struct cand){0, h[i].id};
    qsort(cd, n, sizeof(*cd), id_cmp);
    for (size_t j = 0; j < f->dim; j++)
        qn += (double)query[j] * query[j];
    qn = sqrt(qn);
    for (uint32_t i0 = 0; i0 < n; i0 += (uint32_t)f->rpp) {
        uint32_t m = n - i0 < f->rpp ? n - i0 : (uint32_t)f->rpp;
        for (uint32_t i = 0; i < m; i++)
            f->ids[i] = cd[i0 + i].id;
        if (f->dtype == EC_DTYPE_F32) {
            rc = cl_gather_host(f->t, f->ids, m, f->buf, f->dtype);
        } else {
            rc = cl_gather_host(f->t, f->ids, m, f->raw, f->dtype);
            if (rc == 0)
                to_f32(f->buf, f->raw, (size_t)m * f->dim, f->dtype);
        }
        if (rc)
            return rc;
        for (uint32_t i = 0; i < m; i++)
            cd[i0 + i].score = cl_search_exact(f->metric, query, qn,
                                               f->buf + (size_t)i * f->dim, f->dim);
    }
    qsort(cd, n, sizeof(*cd), cl_search_cand_cmp);
    for (size_t i = 0; i < f->k; i++) {
        if (i < n) {
            ids[i] = cd[i].id;
            scores[i] = (float)(f->metric == EC_METRIC_L2 ? -cd[i].score : cd[i].score);
        } else {
            ids[i] = -1;
            scores[i] = f->metric == EC_METRIC_L2 ? INFINITY : -INFINITY;
        }
    }
    return 0;
}

static int finish_query(struct search *s, struct worker *w, const float *query,
                        const struct hent *h, uint32_t n, struct cand *cd, float *scores,
                        int64_t *ids)
{
    struct cl_finish f = {
        .t = s->t, .metric = s->metric, .dtype = s->dtype, .dim = s->dim, .k = s->k,
        .rpp = s->rpp, .ids = w->ids, .buf = w->buf, .raw = w->raw, .cd = cd,
    };

    return cl_search_finish(&f, query, h, n, scores, ids);
}

/* Merge the other threads' heaps into thread 0's. */
static void merge_heaps(struct search *s)
{
    struct worker *w0 = &s->w[0];

    for (unsigned t = 1; t < s->nthreads; t++) {
        struct worker *w = &s->w[t];
        for (size_t q = 0; q < s->nq; q++) {
            const struct hent *h = w->heap + q * s->kp;
            for (uint32_t i = 0; i < w->hn[q]; i++)
                heap_offer(w0->heap + q * s->kp, &w0->hn[q], s->kp, &w0->thr[q], h[i].key,
                           h[i].id);
        }
    }
}

/* ------------------------------------------------------------------ */
/* ec_search                                                           */

static int check_args(const ec_tensor *t, const float *queries, size_t nq, size_t dim,
                      size_t k, ec_metric metric, const ec_search_opts *o, const float *scores,
                      const int64_t *ids)
{
    if (!t || !queries || !scores || !ids)
        return ec_seterr(EC_EINVAL, "ec_search: NULL argument (%s)",
                         !t ? "tensor" : !queries ? "queries" : !scores ? "scores" : "ids");
    if (o && o->flags)
        return ec_seterr(EC_EINVAL, "ec_search: unknown flags 0x%x", o->flags);
    if (!ec_metric_name(metric))
        return ec_seterr(EC_EINVAL, "ec_search: unknown metric %d (EC_METRIC_IP, "
                                    "EC_METRIC_COSINE or EC_METRIC_L2)", (int)metric);
    if (t->t.ndim != 2)
        return ec_seterr(EC_EINVAL, "cannot search tensor '%s' of model '%s': it has %u "
                                    "dimension(s), and search needs a 2-D [rows, dim] tensor",
                         t->t.name, t->t.model, t->t.ndim);
    if (t->t.dtype != EC_DTYPE_F32 && t->t.dtype != EC_DTYPE_F16 &&
        t->t.dtype != EC_DTYPE_BF16)
        return ec_seterr(EC_EDTYPE, "cannot search tensor '%s' of model '%s': its dtype is "
                                    "%s, and search reads f32, f16 or bf16 tables",
                         t->t.name, t->t.model,
                         ec_dtype_name((ec_dtype)t->t.dtype)
                             ? ec_dtype_name((ec_dtype)t->t.dtype) : "unknown");
    if (nq == 0 || k == 0)
        return ec_seterr(EC_EINVAL, "ec_search: %s is 0 (at least one query and one "
                                    "result per query)", nq == 0 ? "nq" : "k");
    if (dim != t->t.shape[1])
        return ec_seterr(EC_EINVAL, "queries have %zu floats each, and rows of tensor '%s' "
                                    "of model '%s' have %llu: pass queries of the tensor's "
                                    "dimension", dim, t->t.name, t->t.model,
                         (unsigned long long)t->t.shape[1]);
    if (nq > INT32_MAX || dim > INT32_MAX || k > SIZE_MAX / sizeof(float) / nq)
        return ec_seterr(EC_ENOMEM, "ec_search: %zu queries of %zu results are too many for "
                                    "one call", nq, k);
    for (size_t q = 0; q < nq; q++) {
        double n2 = 0;
        for (size_t j = 0; j < dim; j++) {
            float v = queries[q * dim + j];
            if (!isfinite(v))
                return ec_seterr(EC_EINVAL, "query %zu, value %zu is %s: queries must be "
                                            "finite", q, j, isnan(v) ? "NaN" : "infinite");
            n2 += (double)v * v;
        }
        if (metric == EC_METRIC_COSINE && n2 == 0)
            return ec_seterr(EC_EINVAL, "query %zu is all zeros: its cosine with any row is "
                                        "undefined", q);
    }
    return 0;
}

/* The exact search of a tensor in memory or on disk (ec_search's arguments
 * checked). */
static int exact(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                 ec_metric metric, const ec_search_opts *opts, float *scores, int64_t *ids)
{
    struct search s = {0};
    float *qs = NULL;
    struct cand *cd = NULL;
    int rc;

    s.t = t;
    s.c = t->c;
    s.metric = metric;
    s.dtype = (ec_dtype)t->t.dtype;
    s.nq = nq;
    s.dim = dim;
    s.k = k;
    s.rows = t->t.rows;
    s.rpp = t->t.rows_per_partition ? t->t.rows_per_partition : 1;
    s.parts = (s.rows + s.rpp - 1) / s.rpp;
    s.row_bytes = t->t.row_bytes;
    s.panel = cl_panel_pays(nq, dim);
    if (s.rows == 0) {
        for (size_t i = 0; i < nq * k; i++) {
            ids[i] = -1;
            scores[i] = metric == EC_METRIC_L2 ? INFINITY : -INFINITY;
        }
        return 0;
    }
    /* k and a few more: room for rows whose float scores and exact scores
     * rank differently. */
    {
        size_t slack = k / 4 < 8 ? 8 : k / 4 > 64 ? 64 : k / 4;
        s.kp = s.rows <= slack || k > s.rows - slack ? (size_t)s.rows : k + slack;
    }
    s.sub = SCORE_BUF_FLOATS / nq;
    if (s.sub > s.rpp)
        s.sub = (size_t)s.rpp;
    if (s.sub < 64)
        s.sub = 64;
    if (s.panel && s.sub > CL_PANEL_ROWS)
        s.sub = CL_PANEL_ROWS;
    s.nthreads = thread_count(&s, opts ? opts->threads : 0);
    /* The queries as scored: unit length for cosine. */
    if (!(qs = malloc(nq * dim * sizeof(float)))) {
        rc = ec_seterr(EC_ENOMEM, "search: a copy of %zu queries", nq);
        goto out;
    }
    for (size_t q = 0; q < nq; q++) {
        double n2 = 0;
        for (size_t j = 0; j < dim; j++)
            n2 += (double)queries[q * dim + j] * queries[q * dim + j];
        for (size_t j = 0; j < dim; j++)
            qs[q * dim + j] = metric == EC_METRIC_COSINE
                                  ? (float)(queries[q * dim + j] / sqrt(n2))
                                  : queries[q * dim + j];
    }
    s.q = qs;
    if (s.kp > SIZE_MAX / sizeof(struct hent) / nq / s.nthreads ||
        !(s.w = calloc(s.nthreads, sizeof(*s.w))) || !(cd = malloc(s.kp * sizeof(*cd)))) {
        rc = ec_seterr(EC_ENOMEM, "search: heaps of %zu results for %zu queries", s.kp, nq);
        goto out;
    }
    s.nalloc = s.nthreads;
    for (unsigned i = 0; i < s.nthreads; i++) {
        s.w[i].idx = i;
        if ((rc = worker_alloc(&s, &s.w[i])))
            goto out;
    }
    if ((rc = prefault(&s)))
        goto out;
    cl_run_parallel(s.nthreads, s.w, sizeof(*s.w), vec_worker);
    if ((rc = cl_terr_first(&s.w[0].err, sizeof(*s.w), s.nthreads)))
        goto out;
    merge_heaps(&s);
    for (size_t q = 0; q < nq && rc == 0; q++)
        rc = finish_query(&s, &s.w[0], queries + q * dim, s.w[0].heap + q * s.kp,
                          s.w[0].hn[q], cd, scores + q * k, ids + q * k);
out:
    for (unsigned i = 0; s.w && i < s.nalloc; i++)
        worker_free(&s.w[i]);
    free(s.w);
    free(cd);
    free(qs);
    return rc;
}

int ec_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
              ec_metric metric, const ec_search_opts *opts, float *scores, int64_t *ids)
{
    int rc;

    if ((rc = check_args(t, queries, nq, dim, k, metric, opts, scores, ids)))
        return rc;
    if ((rc = cl_stale(t->c)))
        return rc;
    if (atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_DYNAMIC) {
        /* With nprobe: its index and the rows written since it was built
         * (client_ivf.c, client_dynivf.c). */
        if (opts && opts->nprobe)
            return cl_ivf_search(t, queries, nq, dim, k, metric, opts, scores, ids);
        return cl_dyn_search(t, queries, nq, dim, k, metric, opts ? opts->threads : 0,
                             scores, ids);
    }
    if (opts && opts->nprobe)
        return cl_ivf_search(t, queries, nq, dim, k, metric, opts, scores, ids);
    return exact(t, queries, nq, dim, k, metric, opts, scores, ids);
}
