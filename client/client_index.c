/*
 * client_index.c - ec_index_build(): an IVF-Flat index of a 2-D tensor of
 * a version, built in the calling process and handed to the daemon
 * (include/embcache_search.h; the file's layout is common/ivffile.h).
 *
 * Runs on the caller's thread (the matrix products on OpenBLAS's threads);
 * reads the tensor only through the public gather path, takes the client's
 * lock only for its requests (RESOLVE, INDEX_PUT).
 *
 * The build:
 *   1. sample: train_rows rows drawn without replacement (selection
 *      sampling: in id order, so the gathers read forward), as f32, of unit
 *      length for cosine;
 *   2. train: k-means from nlist distinct sample rows, `iters` rounds of
 *      assign (cblas_sgemm of a block of rows against the centroids; the key
 *      is the inner product for IP and cosine, 2 x.c - |c|^2 for L2) and
 *      update (means; for IP and cosine scaled to unit length, as FAISS's
 *      spherical k-means for METRIC_INNER_PRODUCT); a cluster left empty
 *      takes half of a cluster drawn in proportion to its size (FAISS's
 *      split: the two centroids moved apart by 1/1024);
 *   3. assign: every row (gathered in blocks) to its best centroid;
 *   4. write: the file into a memfd of its final size, mapped: rows scattered
 *      into their lists in id order (a second read of the tensor), then the
 *      checksums; the memfd is sealed against writes;
 *   5. send: INDEX_PUT with the memfd; the daemon copies and checks it.
 *
 * A dynamic table (shm/dyntable.h) has no row numbers and changes under
 * the build: its lsn L0 is read first (acquire), then every live slot is
 * copied once (key and row, seq-checked) into memory of the build, and the
 * steps above read that copy, with positions in it as ids; the file
 * (format 2, KEYED) stores the keys in their place, with built_lsn = L0.
 * Every row written up to L0 is in the copy or was replaced since by a row
 * of a larger lsn, which searches take from the table (client_dynivf.c);
 * a key the copy met twice (it moved during the copy) is kept once.
 */
#include <cblas.h>
#include <math.h>
#include <time.h>

#include "client/client_impl.h"
#include "client/search_impl.h"
#include "common/ivffile.h"
#include "shm/dyntable.h"
#include "shm/index.h"

/* Rows per gather while reading the tensor. */
#define READ_BLOCK 4096
/* Floats of the score block of the assignment, at most (64 MiB). */
#define ASSIGN_FLOATS ((size_t)16 << 20)
#define DEFAULT_ITERS 10
#define MAX_ITERS 1000
#define SPLIT_EPS (1.0f / 1024.0f)

struct build {
    ec_tensor *t;
    ec_metric metric;
    size_t dim;
    uint64_t rows;
    uint32_t nlist;
    uint64_t rng;
    float *cent;                /* nlist * dim */
    float *cnorm;               /* nlist: |c|^2 (L2) */
    float *S;                   /* score block: chunk * nlist */
    size_t chunk;               /* rows per score block */
    int64_t *rid;               /* READ_BLOCK ids */
    uint8_t *raw;               /* READ_BLOCK rows as stored */
    float *blk;                 /* READ_BLOCK rows as f32 */
    const float *mem;           /* a dynamic table: its rows copied (rows * dim), else NULL */
    const int64_t *keys;        /* and their keys, in the same order */
    ec_index_progress_fn progress;
    void *parg;
    double last;                /* when progress was last called */
    uint64_t reseeded;
};

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, 1). */
static double rnd01(uint64_t *s)
{
    return (double)(rnd(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* Report progress: at the end of a phase (done == total), or when 0.1 s
 * passed since the last call. A callback that says stop fails the build. */
static int report(struct build *b, ec_index_phase ph, uint64_t done, uint64_t total)
{
    double t;

    if (!b->progress)
        return 0;
    t = now_s();
    if (done != total && t - b->last < 0.1)
        return 0;
    b->last = t;
    if (b->progress(ph, done, total, b->parg))
        return ec_seterr(EC_EINVAL, "index build of tensor '%s' stopped by its progress "
                                    "callback", b->t->t.name);
    return 0;
}

/* Scale x (dim floats) to unit length; a row of norm 0 stays 0. */
static void unit(float *x, size_t dim)
{
    double n2 = 0;

    for (size_t j = 0; j < dim; j++)
        n2 += (double)x[j] * x[j];
    if (n2 > 0) {
        double inv = 1.0 / sqrt(n2);
        for (size_t j = 0; j < dim; j++)
            x[j] = (float)(x[j] * inv);
    }
}

/* Rows ids[0..n) of the tensor into out as f32 (unit length for cosine). */
static int read_rows(struct build *b, const int64_t *ids, size_t n, float *out)
{
    ec_tensor *t = b->t;
    ec_dtype dt = (ec_dtype)t->t.dtype;
    int rc = 0;

    if (b->mem) {
        for (size_t i = 0; i < n; i++)
            memcpy(out + i * b->dim, b->mem + (size_t)ids[i] * b->dim, b->dim * sizeof(float));
    } else if (dt == EC_DTYPE_F32) {
        rc = ec_tensor_gather(t, ids, n, out, n * b->dim * sizeof(float));
    } else {
        rc = ec_tensor_gather(t, ids, n, b->raw, n * t->t.row_bytes);
        if (rc == 0)
            cl_to_f32(out, b->raw, n * b->dim, dt);
    }
    if (rc)
        return ec_adderr(rc, "index build: reading tensor '%s'", t->t.name);
    if (b->metric == EC_METRIC_COSINE)
        for (size_t i = 0; i < n; i++)
            unit(out + i * b->dim, b->dim);
    return 0;
}

/* The best centroid of each of the n rows X into out (ties: the smaller
 * list); with sums/counts, also add each row to its list's sum. */
static void assign(struct build *b, const float *X, size_t n, uint32_t *out, double *sums,
                   uint64_t *counts)
{
    size_t nl = b->nlist, dim = b->dim;

    if (b->metric == EC_METRIC_L2)
        cl_search_dots(NULL, 0, b->cent, nl, dim, NULL, 0, b->cnorm);
    for (size_t r0 = 0; r0 < n; r0 += b->chunk) {
        size_t m = n - r0 < b->chunk ? n - r0 : b->chunk;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)nl, (int)dim, 1.0f,
                    X + r0 * dim, (int)dim, b->cent, (int)dim, 0.0f, b->S, (int)nl);
        for (size_t i = 0; i < m; i++) {
            uint32_t bl = cl_search_nearest(b->S + i * nl, nl,
                                             b->metric == EC_METRIC_L2 ? b->cnorm : NULL);
            out[r0 + i] = bl;
            if (sums) {
                const float *x = X + (r0 + i) * dim;
                double *sum = sums + (size_t)bl * dim;
                for (size_t j = 0; j < dim; j++)
                    sum[j] += x[j];
                counts[bl]++;
            }
        }
    }
}

/* Empty clusters take half of a cluster drawn with probability in
 * proportion to its size less one. */
static void split_empty(struct build *b, uint64_t *counts)
{
    size_t dim = b->dim;

    for (uint32_t ci = 0; ci < b->nlist; ci++) {
        uint64_t total = 0;
        double target;
        uint32_t cj = 0;
        if (counts[ci])
            continue;
        for (uint32_t l = 0; l < b->nlist; l++)
            total += counts[l] > 1 ? counts[l] - 1 : 0;
        if (total == 0)
            return; /* nothing can be split: as many clusters as rows */
        target = rnd01(&b->rng) * (double)total;
        for (uint32_t l = 0; l < b->nlist; l++) {
            uint64_t w = counts[l] > 1 ? counts[l] - 1 : 0;
            if (w && target < (double)w) {
                cj = l;
                break;
            }
            target -= (double)w;
            cj = l;
        }
        if (counts[cj] < 2)
            continue;
        memcpy(b->cent + (size_t)ci * dim, b->cent + (size_t)cj * dim, dim * sizeof(float));
        for (size_t j = 0; j < dim; j++) {
            float up = 1.0f + SPLIT_EPS, down = 1.0f - SPLIT_EPS;
            b->cent[(size_t)ci * dim + j] *= j % 2 ? down : up;
            b->cent[(size_t)cj * dim + j] *= j % 2 ? up : down;
        }
        counts[ci] = counts[cj] / 2;
        counts[cj] -= counts[ci];
        b->reseeded++;
    }
}

/* k-means over the n sample rows X. */
static int train(struct build *b, const float *X, size_t n, uint32_t iters)
{
    size_t nl = b->nlist, dim = b->dim;
    double *sums = malloc(nl * dim * sizeof(double));
    uint64_t *counts = malloc(nl * sizeof(uint64_t)), left = nl;
    uint32_t *lab = malloc(n * sizeof(uint32_t));
    int rc = 0;

    if (!sums || !counts || !lab) {
        rc = ec_seterr(EC_ENOMEM, "k-means of %zu rows into %zu lists", n, nl);
        goto out;
    }
    /* nlist distinct sample rows (selection sampling). */
    for (size_t i = 0, c = 0; i < n && c < nl; i++)
        if (rnd01(&b->rng) * (double)(n - i) < (double)left) {
            memcpy(b->cent + c * dim, X + i * dim, dim * sizeof(float));
            c++;
            left--;
        }
    if (b->metric != EC_METRIC_L2)
        for (size_t l = 0; l < nl; l++)
            unit(b->cent + l * dim, dim);
    for (uint32_t it = 0; it < iters && rc == 0; it++) {
        memset(sums, 0, nl * dim * sizeof(double));
        memset(counts, 0, nl * sizeof(uint64_t));
        assign(b, X, n, lab, sums, counts);
        for (size_t l = 0; l < nl; l++) {
            if (!counts[l])
                continue;
            for (size_t j = 0; j < dim; j++)
                b->cent[l * dim + j] = (float)(sums[l * dim + j] / (double)counts[l]);
        }
        split_empty(b, counts);
        if (b->metric != EC_METRIC_L2)
            for (size_t l = 0; l < nl; l++)
                unit(b->cent + l * dim, dim);
        rc = report(b, EC_INDEX_TRAIN, it + 1, iters);
    }
out:
    free(lab);
    free(counts);
    free(sums);
    return rc;
}

/* Selection sampling: n of the rows, in increasing order, into ids. */
static void sample_ids(struct build *b, uint64_t n, int64_t *ids)
{
    uint64_t left = n, k = 0;

    for (uint64_t r = 0; r < b->rows && left; r++)
        if (n == b->rows || rnd01(&b->rng) * (double)(b->rows - r) < (double)left) {
            ids[k++] = (int64_t)r;
            left--;
        }
}

static int read_sample(struct build *b, uint64_t n, float *X)
{
    int64_t *ids = malloc(n * sizeof(int64_t));
    int rc = 0;

    if (!ids)
        return ec_seterr(EC_ENOMEM, "ids of a %llu-row sample", (unsigned long long)n);
    sample_ids(b, n, ids);
    for (uint64_t i = 0; i < n && rc == 0; i += READ_BLOCK) {
        size_t m = (size_t)(n - i < READ_BLOCK ? n - i : READ_BLOCK);
        rc = read_rows(b, ids + i, m, X + i * b->dim);
        if (rc == 0)
            rc = report(b, EC_INDEX_SAMPLE, i + m, n);
    }
    free(ids);
    return rc;
}

/* Every row: its list (pass 1, phase ASSIGN), or its place in the file
 * (pass 2, phase WRITE: cursor[l] is where list l's next row goes). */
static int each_block(struct build *b, ec_index_phase ph, uint32_t *lists, uint64_t *cursor,
                      int64_t *fids, float *fnorms, float *fvec)
{
    int rc = 0;

    for (uint64_t r0 = 0; r0 < b->rows && rc == 0; r0 += READ_BLOCK) {
        size_t m = (size_t)(b->rows - r0 < READ_BLOCK ? b->rows - r0 : READ_BLOCK);
        for (size_t i = 0; i < m; i++)
            b->rid[i] = (int64_t)(r0 + i);
        if ((rc = read_rows(b, b->rid, m, b->blk)))
            break;
        if (ph == EC_INDEX_ASSIGN) {
            assign(b, b->blk, m, lists + r0, NULL, NULL);
        } else {
            for (size_t i = 0; i < m; i++) {
                uint64_t at = cursor[lists[r0 + i]]++;
                const float *x = b->blk + i * b->dim;
                double n2 = 0;
                for (size_t j = 0; j < b->dim; j++)
                    n2 += (double)x[j] * x[j];
                fids[at] = b->keys ? b->keys[r0 + i] : (int64_t)(r0 + i);
                fnorms[at] = (float)n2;
                memcpy(fvec + at * b->dim, x, b->dim * sizeof(float));
            }
        }
        rc = report(b, ph, r0 + m, b->rows);
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* A dynamic table's rows                                              */

struct keypos {
    int64_t key;
    uint64_t pos;
};

static int keypos_cmp(const void *a, const void *b)
{
    const struct keypos *x = a, *y = b;

    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* Keep the first copy of each key of keys/rows[0..*n) (a key that moved
 * to another slot during the copy was met twice: either copy will do, its
 * new slot's lsn is above the build's). */
static int drop_repeats(int64_t *keys, float *rows, size_t dim, uint64_t *n)
{
    struct keypos *kp = malloc((size_t)(*n ? *n : 1) * sizeof(*kp));
    uint8_t *gone = calloc((size_t)(*n ? *n : 1), 1);
    uint64_t m = 0, reps = 0;

    if (!kp || !gone) {
        free(kp);
        free(gone);
        return ec_seterr(EC_ENOMEM, "index build: checking %llu keys",
                         (unsigned long long)*n);
    }
    for (uint64_t i = 0; i < *n; i++)
        kp[i] = (struct keypos){keys[i], i};
    qsort(kp, (size_t)*n, sizeof(*kp), keypos_cmp);
    for (uint64_t i = 1; i < *n; i++)
        if (kp[i].key == kp[i - 1].key) {
            gone[kp[i].pos] = 1;
            reps++;
        }
    if (reps)
        for (uint64_t i = 0; i < *n; i++) {
            if (gone[i])
                continue;
            keys[m] = keys[i];
            memmove(rows + m * dim, rows + i * dim, dim * sizeof(float));
            m++;
        }
    else
        m = *n;
    free(kp);
    free(gone);
    *n = m;
    return 0;
}

/* Copy the live keys and rows (as f32) of dynamic table t: *lsn is the
 * table's lsn, read (acquire) before the copy, so every row written up to
 * it is in the copy or was replaced during it by a row of a larger lsn. */
static int copy_table(ec_tensor *t, size_t dim, float **rows_out, int64_t **keys_out,
                      uint64_t *n_out, uint64_t *lsn)
{
    const ec_segment *seg = &t->c->seg;
    ec_dtype dt = (ec_dtype)t->t.dtype;
    ec_index_ref ref;
    ec_dyn_view v;
    uint64_t cap, n = 0;
    float *rows = NULL;
    int64_t *keys = NULL;
    uint8_t *raw = NULL;
    int rc;

    if (!ec_index_lookup(seg, t->t.id, EC_DYN_PART, &ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' is not served any more: resolve it "
                                    "again", t->t.name);
    if ((rc = ec_dyn_view_open(seg, ref.offset, t->t.id, t->t.row_bytes, &v)))
        return rc;
    *lsn = atomic_load_explicit(&v.hdr->lsn, memory_order_acquire);
    cap = atomic_load_explicit(&v.hdr->live, memory_order_relaxed);
    cap = cap + cap / 8 + 64;
    if (cap > v.nslots)
        cap = v.nslots;
    rows = malloc((size_t)cap * dim * sizeof(float));
    keys = malloc((size_t)cap * sizeof(int64_t));
    raw = malloc(t->t.row_bytes);
    if (!rows || !keys || !raw) {
        rc = ec_seterr(EC_ENOMEM, "index build: a copy of the %llu rows of dynamic table "
                                  "'%s'", (unsigned long long)cap, t->t.name);
        goto fail;
    }
    for (uint64_t s = 0; s < v.nslots; s++) {
        int64_t key;
        int r = ec_dyn_slot_read(&v, s, &key, raw);
        if (r < 0) {
            rc = r;
            goto fail;
        }
        if (r == 0)
            continue;
        if (n == cap) {
            /* Keys came in during the copy (a slot is read once: at most
             * nslots of them). */
            uint64_t ncap = cap * 2 < v.nslots ? cap * 2 : v.nslots;
            float *r2 = realloc(rows, (size_t)ncap * dim * sizeof(float));
            int64_t *k2 = r2 ? realloc(keys, (size_t)ncap * sizeof(int64_t)) : NULL;
            if (r2)
                rows = r2;
            if (k2)
                keys = k2;
            if (!r2 || !k2) {
                rc = ec_seterr(EC_ENOMEM, "index build: a copy of %llu rows of dynamic "
                                          "table '%s'", (unsigned long long)ncap, t->t.name);
                goto fail;
            }
            cap = ncap;
        }
        cl_to_f32(rows + n * dim, raw, dim, dt);
        keys[n++] = key;
    }
    if (!ec_index_still_valid(&ref)) {
        rc = ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped or rebuilt during the index "
                                  "build: resolve it and build again", t->t.name);
        goto fail;
    }
    if ((rc = drop_repeats(keys, rows, dim, &n)))
        goto fail;
    free(raw);
    *rows_out = rows;
    *keys_out = keys;
    *n_out = n;
    return 0;
fail:
    free(raw);
    free(rows);
    free(keys);
    return rc;
}

/* INDEX_PUT: the daemon checks the file and keeps it. */
static int send_index(ec_client *c, ec_tensor *t, int fd, uint64_t size)
{
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;
    int rc;

    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, EC_OP_INDEX_PUT);
    ec_put_str(&w, t->t.model);
    ec_put_i64(&w, t->t.version);
    ec_put_str(&w, t->t.name);
    ec_put_u64(&w, size);
    rc = cl_rpc(c, &w, id, &fd, 1, &body, NULL, NULL, 0);
    if (rc == 0 && (ec_get_u64(&body) != size || !ec_rbuf_done(&body)))
        rc = ec_seterr(EC_EPROTO, "malformed INDEX_PUT reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

static int check_opts(const ec_index_opts *o, ec_metric *metric)
{
    *metric = o->metric ? o->metric : EC_METRIC_IP;
    if (o->flags)
        return ec_seterr(EC_EINVAL, "ec_index_build: unknown flags 0x%x", o->flags);
    if (!ec_metric_name(*metric))
        return ec_seterr(EC_EINVAL, "ec_index_build: unknown metric %d (EC_METRIC_IP, "
                                    "EC_METRIC_COSINE or EC_METRIC_L2)", (int)o->metric);
    if (o->iters > MAX_ITERS)
        return ec_seterr(EC_EINVAL, "ec_index_build: %u k-means iterations (at most %d)",
                         o->iters, MAX_ITERS);
    return 0;
}

/* 4 sqrt(rows) to the nearest power of two, at most rows. */
static uint32_t default_nlist(uint64_t rows)
{
    double want = 4.0 * sqrt((double)rows);
    uint32_t p = 1;

    while (p < (1u << 20) && (double)p * 1.4142135623730951 < want)
        p <<= 1;
    return rows < p ? (uint32_t)rows : p;
}

int ec_index_build(ec_client *c, const char *model, const char *version, const char *tensor,
                   const ec_index_opts *opts, ec_index_build_stats *st)
{
    ec_index_opts o = opts ? *opts : (ec_index_opts){0};
    struct build b = {0};
    ec_ivf_section sec[EC_IVF_NSEC];
    ec_index_build_stats res = {0};
    double t0 = now_s(), t1;
    uint64_t ntrain, size = 0, *cursor = NULL;
    uint32_t *lists = NULL, iters;
    float *X = NULL, *mem = NULL;
    int64_t *mkeys = NULL;
    uint64_t built_lsn = 0;
    bool dynamic;
    uint8_t *map = MAP_FAILED;
    ec_tensor *t = NULL;
    int fd = -1, rc;

    if (!c || !model || !version || !tensor)
        return ec_seterr(EC_EINVAL, "ec_index_build: NULL argument");
    if ((rc = check_opts(&o, &b.metric)))
        return rc;
    if ((rc = ec_tensor_resolve(c, model, version, tensor, &t)))
        return rc;
    dynamic = atomic_load_explicit(&t->mode, memory_order_relaxed) == EC_CACHE_DYNAMIC;
    if (t->t.ndim != 2 || (!dynamic && t->t.rows == 0) || t->t.shape[1] == 0) {
        rc = ec_seterr(EC_EINVAL, "cannot index tensor '%s' of model '%s': an index needs a "
                                  "2-D [rows, dim] tensor with rows and columns", tensor, model);
        goto out;
    }
    if (t->t.dtype != EC_DTYPE_F32 && t->t.dtype != EC_DTYPE_F16 &&
        t->t.dtype != EC_DTYPE_BF16) {
        rc = ec_seterr(EC_EDTYPE, "cannot index tensor '%s' of model '%s': its dtype is %s, "
                                  "and an index reads f32, f16 or bf16 tables", tensor, model,
                       ec_dtype_name((ec_dtype)t->t.dtype) ? ec_dtype_name((ec_dtype)t->t.dtype)
                                                           : "unknown");
        goto out;
    }
    b.t = t;
    b.rows = t->t.rows;
    b.dim = (size_t)t->t.shape[1];
    if (dynamic && b.dim <= EC_IVF_MAX_DIM) {
        /* Its keys and rows now, once (see the top). */
        if ((rc = copy_table(t, b.dim, &mem, &mkeys, &b.rows, &built_lsn)))
            goto out;
        if (b.rows == 0) {
            rc = ec_seterr(EC_EINVAL, "cannot index dynamic table '%s' of model '%s': it "
                                      "holds no key", tensor, model);
            goto out;
        }
        b.mem = mem;
        b.keys = mkeys;
    }
    if (b.rows > EC_IVF_MAX_ROWS || b.dim > EC_IVF_MAX_DIM) {
        rc = ec_seterr(EC_EINVAL, "cannot index tensor '%s': %llu rows of %zu (at most 2^40 "
                                  "rows of %u)", tensor, (unsigned long long)b.rows, b.dim,
                       EC_IVF_MAX_DIM);
        goto out;
    }
    b.nlist = o.nlist ? o.nlist : default_nlist(b.rows);
    if (b.nlist > b.rows) {
        rc = ec_seterr(EC_EINVAL, "cannot index tensor '%s' in %u lists: it has %llu rows "
                                  "(at most one list per row)", tensor, b.nlist,
                       (unsigned long long)b.rows);
        goto out;
    }
    iters = o.iters ? o.iters : DEFAULT_ITERS;
    ntrain = o.train_rows ? o.train_rows : (uint64_t)b.nlist * 64;
    if (ntrain > b.rows)
        ntrain = b.rows;
    if (ntrain < b.nlist) {
        rc = ec_seterr(EC_EINVAL, "cannot train %u lists on %llu rows: train on at least as "
                                  "many rows as lists", b.nlist, (unsigned long long)ntrain);
        goto out;
    }
    b.rng = o.seed ? o.seed : 0x5eed1dc0ffee1234ULL;
    b.progress = o.progress;
    b.parg = o.progress_arg;
    b.chunk = ASSIGN_FLOATS / b.nlist ? ASSIGN_FLOATS / b.nlist : 1;
    if (b.chunk > ntrain && b.chunk > READ_BLOCK)
        b.chunk = ntrain > READ_BLOCK ? (size_t)ntrain : READ_BLOCK;
    b.cent = malloc((size_t)b.nlist * b.dim * sizeof(float));
    b.cnorm = malloc(b.nlist * sizeof(float));
    b.S = malloc(b.chunk * b.nlist * sizeof(float));
    b.rid = malloc(READ_BLOCK * sizeof(int64_t));
    b.raw = malloc(READ_BLOCK * t->t.row_bytes);
    b.blk = malloc(READ_BLOCK * b.dim * sizeof(float));
    X = malloc((size_t)ntrain * b.dim * sizeof(float));
    lists = malloc((size_t)b.rows * sizeof(uint32_t));
    cursor = calloc((size_t)b.nlist + 1, sizeof(uint64_t));
    if (!b.cent || !b.cnorm || !b.S || !b.rid || !b.raw || !b.blk || !X || !lists || !cursor) {
        rc = ec_seterr(EC_ENOMEM, "index build of tensor '%s': a %llu-row sample, %u "
                                  "centroids of %zu floats", tensor,
                       (unsigned long long)ntrain, b.nlist, b.dim);
        goto out;
    }
    /* 1, 2: sample and train. */
    if ((rc = read_sample(&b, ntrain, X)) || (rc = train(&b, X, (size_t)ntrain, iters)))
        goto out;
    free(X);
    X = NULL;
    t1 = now_s();
    res.train_s = t1 - t0;
    /* 3: every row to its list. */
    if ((rc = each_block(&b, EC_INDEX_ASSIGN, lists, NULL, NULL, NULL, NULL)))
        goto out;
    res.assign_s = now_s() - t1;
    /* 4: the file. */
    size = ec_ivf_layout(b.rows, b.dim, b.nlist, sec);
    fd = memfd_create("embcache-index", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 || ftruncate(fd, (off_t)size) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "a %llu-byte memory file for the index of '%s'",
                             (unsigned long long)size, tensor);
        goto out;
    }
    map = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (map == MAP_FAILED) {
        rc = ec_seterr_errno(EC_EIO, errno, "mapping the %llu-byte index of '%s'",
                             (unsigned long long)size, tensor);
        goto out;
    }
    {
        ec_ivf_header *h = (ec_ivf_header *)(void *)map;
        uint64_t *offs = (uint64_t *)(void *)(map + sec[EC_IVF_OFFSETS].offset);

        memset(h, 0, sizeof(*h));
        h->magic = EC_IVF_MAGIC;
        /* A tensor's index stays format 1 (older daemons read it). */
        h->format = dynamic ? EC_IVF_FORMAT_KEYED : EC_IVF_FORMAT;
        h->flags = dynamic ? EC_IVF_KEYED : 0;
        h->header_size = EC_IVF_HEADER_SIZE;
        snprintf(h->model, sizeof(h->model), "%s", t->t.model);
        snprintf(h->tensor, sizeof(h->tensor), "%s", t->t.name);
        h->version = t->t.version;
        h->tensor_id = t->t.id;
        h->rows = b.rows;
        h->dim = b.dim;
        h->dtype = EC_DTYPE_F32;
        h->src_dtype = t->t.dtype;
        h->metric = (uint32_t)b.metric;
        h->nlist = b.nlist;
        h->built_lsn = built_lsn;
        h->train_rows = ntrain;
        h->iters = iters;
        memcpy(h->sec, sec, sizeof(sec));
        memcpy(map + sec[EC_IVF_CENTROIDS].offset, b.cent, sec[EC_IVF_CENTROIDS].size);
        for (uint64_t r = 0; r < b.rows; r++)
            cursor[lists[r] + 1]++;
        res.min_list = UINT64_MAX;
        for (uint32_t l = 0; l < b.nlist; l++) {
            uint64_t n = cursor[l + 1];
            res.min_list = n < res.min_list ? n : res.min_list;
            res.max_list = n > res.max_list ? n : res.max_list;
            cursor[l + 1] += cursor[l];
        }
        memcpy(offs, cursor, ((size_t)b.nlist + 1) * sizeof(uint64_t));
        rc = each_block(&b, EC_INDEX_WRITE, lists, cursor,
                        (int64_t *)(void *)(map + sec[EC_IVF_IDS].offset),
                        (float *)(void *)(map + sec[EC_IVF_NORMS].offset),
                        (float *)(void *)(map + sec[EC_IVF_VECTORS].offset));
        if (rc)
            goto out;
        ec_ivf_seal(map, size);
    }
    munmap(map, (size_t)size);
    map = MAP_FAILED;
    /* Nobody writes it any more (best effort: the daemon copies it anyway). */
    (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL);
    /* 5: to the daemon. */
    if ((rc = report(&b, EC_INDEX_SEND, 0, 1)) || (rc = send_index(c, t, fd, size)) ||
        (rc = report(&b, EC_INDEX_SEND, 1, 1)))
        goto out;
    res.rows = b.rows;
    res.dim = b.dim;
    res.nlist = b.nlist;
    res.iters = iters;
    res.train_rows = ntrain;
    res.reseeded = b.reseeded;
    res.file_bytes = size;
    res.total_s = now_s() - t0;
    if (st)
        *st = res;
out:
    if (map != MAP_FAILED)
        munmap(map, (size_t)size);
    if (fd >= 0)
        close(fd);
    free(cursor);
    free(lists);
    free(X);
    free(mem);
    free(mkeys);
    free(b.blk);
    free(b.raw);
    free(b.rid);
    free(b.S);
    free(b.cnorm);
    free(b.cent);
    ec_tensor_release(t);
    return rc;
}
