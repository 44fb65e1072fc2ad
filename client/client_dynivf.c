/*
 * client_dynivf.c - the approximate search of a dynamic table through its
 * IVF index (ec_search with opts.nprobe on a tensor made dynamic), and
 * ec_index_staleness_get().
 *
 * The index of a dynamic table (common/ivffile.h, KEYED) holds the table's
 * keys and rows as they were when its build began, at the table's lsn
 * built_lsn (client_index.c). Every slot of the table records the lsn of
 * the update that wrote it (shm/dyntable.h), so the rows written since are
 * the live slots of an lsn above built_lsn: the delta, found by reading
 * slot headers only. A search (client_ivf.c drives it, these are its
 * steps for one chunk of queries):
 *
 *   1. begin: the table's lsn L (acquire): every slot of an lsn in
 *      (built_lsn, L] was written before L was published;
 *   2. delta: every live slot above built_lsn is read (key and row,
 *      seq-checked) and scored against the queries into their heaps, as
 *      exact search scores rows. Found by reading every slot's header,
 *      unless L is built_lsn (no delta) or an earlier search of the handle
 *      found the slots at this very L (struct cl_dyndelta: no slot gets
 *      above built_lsn without a batch that moves L);
 *   3. lists: the probed lists' rows are scored from the index; a key is
 *      offered only if it is still in the table (a deleted key drops out)
 *      and its slot's lsn is not in (built_lsn, L] (then the delta offered
 *      its row of now; a key written after L is offered from the index,
 *      and step 4 scores its row of now);
 *   4. finish: each candidate key is looked up (its row now) and scored
 *      again in double precision exactly as exact search scores it
 *      (cl_search_exact); a key gone meanwhile drops out, repeats are
 *      dropped;
 *   5. end: the table was not dropped or rebuilt meanwhile (else
 *      EC_ESTALE: resolve again).
 * So an answer holds no deleted key and no stale score, and a key written
 * since the build is always a candidate: the index needs no rebuild to stay
 * right; the cost of a search grows with the delta (step 2 scores all of
 * it), which is what ec_index_staleness_get reports.
 *
 * Runs on the caller's thread, except cl_dynivf_keep, which the search's
 * threads call; nothing here writes shared memory or takes a lock.
 */
#include "client/client_impl.h"
#include "client/search_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

/* Rows of the delta scored per block, at most. */
#define BLOCK 1024u
/* Scores of a block, at most (a chunk of many queries: smaller blocks). */
#define BLOCK_FLOATS ((size_t)4 << 20)

static int table_view(ec_tensor *t, ec_index_ref *ref, ec_dyn_view *v)
{
    const ec_segment *seg = &t->c->seg;

    if (!ec_index_lookup(seg, t->t.id, EC_DYN_PART, ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' is not served any more: resolve it "
                                    "again", t->t.name);
    return ec_dyn_view_open(seg, ref->offset, t->t.id, t->t.row_bytes, v);
}

void cl_dyndelta_init(struct cl_dyndelta *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
}

void cl_dyndelta_destroy(struct cl_dyndelta *c)
{
    pthread_mutex_destroy(&c->lock);
    free(c->slots);
    c->slots = NULL;
}

int cl_dynivf_begin(struct cl_dynivf *d, ec_tensor *t, uint64_t built_lsn, size_t kp,
                    struct cl_dyndelta *cache)
{
    size_t dim = (size_t)t->t.shape[1];
    int rc;

    memset(d, 0, sizeof(*d));
    d->t = t;
    d->cache = cache;
    d->built_lsn = built_lsn;
    if ((rc = table_view(t, &d->ref, &d->v)))
        return rc;
    d->lsn = atomic_load_explicit(&d->v.hdr->lsn, memory_order_acquire);
    if (d->lsn < built_lsn)
        return ec_seterr(EC_EINVAL, "the index of dynamic table '%s' of model '%s' version "
                                    "%lld was built at lsn %llu, and the table is at lsn %llu: "
                                    "it is not of this table's history; build it again "
                                    "(`embcache index build %s %lld %s`)", t->t.name,
                         t->t.model, (long long)t->t.version, (unsigned long long)built_lsn,
                         (unsigned long long)d->lsn, t->t.model, (long long)t->t.version,
                         t->t.name);
    d->X = malloc((size_t)BLOCK * dim * sizeof(float));
    d->norms = malloc(BLOCK * sizeof(float));
    d->keys = malloc(BLOCK * sizeof(int64_t));
    d->raw = malloc(t->t.row_bytes + 1);
    d->fbuf = malloc(dim * sizeof(float));
    d->cd = malloc((kp ? kp : 1) * sizeof(struct cand));
    if (!d->X || !d->norms || !d->keys || !d->raw || !d->fbuf || !d->cd)
        return ec_seterr(EC_ENOMEM, "approximate search of dynamic table '%s'", t->t.name);
    return 0;
}

void cl_dynivf_free(struct cl_dynivf *d)
{
    free(d->X);
    free(d->norms);
    free(d->C);
    free(d->keys);
    free(d->raw);
    free(d->fbuf);
    free(d->cd);
    free(d->slots);
    memset(d, 0, sizeof(*d));
}

/* Score the m rows of the block against the nq queries qs (as scored:
 * unit length for cosine) into their heaps, with exact search's keys. */
static void offer_block(struct cl_dynivf *d, const float *qs, size_t nq, size_t dim,
                        ec_metric metric, size_t m, size_t kp, struct hent *heap, uint32_t *hn,
                        float *thr)
{
    cl_search_dots(qs, nq, d->X, m, dim, d->C, m, metric == EC_METRIC_IP ? NULL : d->norms);
    for (size_t q = 0; q < nq; q++)
        for (size_t r = 0; r < m; r++) {
            float c = d->C[q * m + r], key;
            if (metric == EC_METRIC_IP)
                key = c;
            else if (metric == EC_METRIC_COSINE)
                key = d->norms[r] > 0 ? c / sqrtf(d->norms[r]) : 0.0f;
            else
                key = 2.0f * c - d->norms[r];
            if (key != key)
                key = -INFINITY;
            if (hn[q] == kp && key < thr[q])
                continue;
            cl_search_heap_offer(heap + q * kp, &hn[q], kp, &thr[q], key, d->keys[r]);
        }
}

/* The slots of the table's delta kept by an earlier search at this very
 * lsn, into d->slots: true, or false (none kept, or of another lsn). */
static bool cached_slots(struct cl_dynivf *d)
{
    struct cl_dyndelta *c = d->cache;
    bool hit = false;

    if (!c)
        return false;
    pthread_mutex_lock(&c->lock);
    if (c->slots && c->off == d->ref.offset && c->eseq == d->ref.seq && c->lsn == d->lsn &&
        (d->slots = malloc((c->n ? c->n : 1) * sizeof(uint64_t)))) {
        memcpy(d->slots, c->slots, c->n * sizeof(uint64_t));
        d->nslots_d = c->n;
        hit = true;
    }
    pthread_mutex_unlock(&c->lock);
    return hit;
}

/* Keep the slots this scan found for the next search at this lsn. */
static void keep_slots(struct cl_dynivf *d)
{
    struct cl_dyndelta *c = d->cache;
    uint64_t *copy;

    if (!c || !(copy = malloc((d->nslots_d ? d->nslots_d : 1) * sizeof(uint64_t))))
        return; /* the next search scans again */
    memcpy(copy, d->slots, d->nslots_d * sizeof(uint64_t));
    pthread_mutex_lock(&c->lock);
    free(c->slots);
    c->slots = copy;
    c->n = d->nslots_d;
    c->off = d->ref.offset;
    c->eseq = d->ref.seq;
    c->lsn = d->lsn;
    pthread_mutex_unlock(&c->lock);
}

int cl_dynivf_delta(struct cl_dynivf *d, const float *qs, size_t nq, size_t dim,
                    ec_metric metric, size_t kp, struct hent *heap, uint32_t *hn, float *thr)
{
    ec_dtype dt = (ec_dtype)d->t->t.dtype;
    size_t blk = BLOCK_FLOATS / nq, m = 0;
    uint64_t cap = 0, end;
    bool cached;

    /* Nothing written since the build (a batch being applied now may be
     * missed, as any write concurrent with the search). */
    if (d->lsn == d->built_lsn)
        return 0;
    if (blk > BLOCK)
        blk = BLOCK;
    if (blk < 16)
        blk = 16;
    free(d->C);
    if (!(d->C = malloc(nq * blk * sizeof(float))))
        return ec_seterr(EC_ENOMEM, "approximate search of dynamic table '%s': scores of %zu "
                                    "queries", d->t->t.name, nq);
    cached = cached_slots(d);
    end = cached ? d->nslots_d : d->v.nslots;
    for (uint64_t i = 0; i <= end; i++) {
        if (i < end) {
            uint64_t s = cached ? d->slots[i] : i, lsn;
            int64_t key;
            int r;
            if (!cached && (!ec_dyn_slot_peek(&d->v, s, &lsn) || lsn <= d->built_lsn))
                continue;
            /* Newer than the build: its row as it is (a slot rewritten since
             * the peek holds a newer row still). */
            if ((r = ec_dyn_slot_read(&d->v, s, &key, d->raw)) < 0)
                return r;
            if (r == 0)
                continue;
            if (!cached) {
                if (d->nslots_d == cap) {
                    uint64_t *p = realloc(d->slots, (cap = cap ? cap * 2 : 256) *
                                                        sizeof(uint64_t));
                    if (!p)
                        return ec_seterr(EC_ENOMEM, "approximate search of dynamic table "
                                                    "'%s': its delta", d->t->t.name);
                    d->slots = p;
                }
                d->slots[d->nslots_d++] = s;
            }
            cl_to_f32(d->X + m * dim, d->raw, dim, dt);
            d->keys[m++] = key;
            d->delta++;
            if (m < blk)
                continue;
        }
        if (m == 0)
            continue;
        offer_block(d, qs, nq, dim, metric, m, kp, heap, hn, thr);
        m = 0;
    }
    if (!cached)
        keep_slots(d);
    return 0;
}

bool cl_dynivf_keep(const struct cl_dynivf *d, int64_t key)
{
    uint64_t lsn;

    /* Absent: deleted or evicted since the build (or a slot left
     * half-written: cl_dynivf_end or the finish says). */
    if (ec_dyn_key_lsn(&d->v, key, &lsn) != 1)
        return false;
    /* In (built, L]: the delta offered its row of now. */
    return lsn <= d->built_lsn || lsn > d->lsn;
}

int cl_dynivf_finish(struct cl_dynivf *d, ec_metric metric, const float *query, size_t dim,
                     const struct hent *h, uint32_t n, size_t k, float *scores, int64_t *ids)
{
    ec_dtype dt = (ec_dtype)d->t->t.dtype;
    struct cand *cd = d->cd;
    uint32_t m = 0;
    double qn = 0;

    for (uint32_t i = 0; i < n; i++)
        cd[i] = (struct cand){0, h[i].id};
    qsort(cd, n, sizeof(*cd), cl_search_cand_cmp); /* all scores 0: by id */
    for (size_t j = 0; j < dim; j++)
        qn += (double)query[j] * query[j];
    qn = sqrt(qn);
    for (uint32_t i = 0; i < n; i++) {
        int r;
        if (m && cd[m - 1].id == cd[i].id)
            continue; /* offered twice (by the delta and a list, a key that moved) */
        if ((r = ec_dyn_find(&d->v, cd[i].id, d->raw, NULL)) < 0)
            return r;
        if (r == 0)
            continue; /* deleted since it was offered */
        cl_to_f32(d->fbuf, d->raw, dim, dt);
        cd[m].id = cd[i].id;
        cd[m++].score = cl_search_exact(metric, query, qn, d->fbuf, dim);
    }
    qsort(cd, m, sizeof(*cd), cl_search_cand_cmp);
    for (size_t i = 0; i < k; i++) {
        if (i < m) {
            ids[i] = cd[i].id;
            scores[i] = (float)(metric == EC_METRIC_L2 ? -cd[i].score : cd[i].score);
        } else {
            ids[i] = -1;
            scores[i] = metric == EC_METRIC_L2 ? INFINITY : -INFINITY;
        }
    }
    return 0;
}

int cl_dynivf_end(struct cl_dynivf *d)
{
    if (!ec_index_still_valid(&d->ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped or rebuilt during the "
                                    "search: resolve it again", d->t->t.name);
    return 0;
}

int ec_index_staleness_get(ec_tensor *t, ec_index_staleness *out)
{
    ec_index_staleness r = {0};
    ec_index_info ii;
    ec_index_ref ref;
    ec_dyn_view v;
    int rc;

    if (!t || !out)
        return ec_seterr(EC_EINVAL, "ec_index_staleness_get: NULL argument");
    if (atomic_load_explicit(&t->mode, memory_order_relaxed) != EC_CACHE_DYNAMIC)
        return ec_seterr(EC_EINVAL, "tensor '%s' of model '%s' is not a dynamic table: its "
                                    "rows, and so its index, do not change", t->t.name,
                         t->t.model);
    /* Maps the index, and refuses one that does not hold keys. */
    if ((rc = ec_index_info_get(t, &ii)) || (rc = table_view(t, &ref, &v)))
        return rc;
    r.built_lsn = ii.built_lsn;
    r.indexed_keys = ii.rows;
    r.table_lsn = atomic_load_explicit(&v.hdr->lsn, memory_order_acquire);
    r.live_keys = atomic_load_explicit(&v.hdr->live, memory_order_relaxed);
    for (uint64_t s = 0; s < v.nslots; s++) {
        uint64_t lsn;
        if (ec_dyn_slot_peek(&v, s, &lsn) && lsn > r.built_lsn)
            r.stale_rows++;
    }
    /* Slots being written count once too many for a moment. */
    if (r.stale_rows > r.live_keys)
        r.stale_rows = r.live_keys;
    if (!ec_index_still_valid(&ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped or rebuilt: resolve it "
                                    "again", t->t.name);
    *out = r;
    return 0;
}
