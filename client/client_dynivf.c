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
 *   2. delta: the live slots above built_lsn, each with the list its row
 *      belongs to (its nearest centroid, as the build assigns rows): found
 *      by reading every slot's header, unless L is built_lsn (no delta) or
 *      the handle's last snapshot (struct cl_dsnap) is of this very L (no
 *      slot gets above built_lsn without a batch that moves L). Only a slot
 *      that is new, or whose lsn moved, or whose lsn was of a batch still
 *      being applied, since that snapshot is read and assigned: a row is
 *      assigned about once per handle, as FAISS's add does (searches racing
 *      at a new lsn may each assign it; every new lsn costs a pass over the
 *      slot headers). Then, list by list, the delta's rows in the lists a
 *      query probes are read (key and row, seq-checked) and scored for it
 *      (the finish scores candidates again exactly);
 *   3. lists: the probed lists' rows are scored from the index; a key is
 *      offered only if it is still in the table (a deleted key drops out;
 *      while L is built_lsn nothing is looked up, and the finish drops it)
 *      and its slot's lsn is not in (built_lsn, L] (then the delta offered
 *      its row of now; a key written after L is offered from the index,
 *      and step 4 scores its row of now). A list's keys are looked up once
 *      per snapshot, by the first search at L that probes it, and the
 *      answer is kept in the snapshot for the searches after it (a key
 *      deleted after that look-up is offered still: step 4 drops it);
 *   4. finish: each candidate key is looked up (its row now) and scored
 *      again in double precision exactly as exact search scores it
 *      (cl_search_exact); a key gone meanwhile drops out, repeats are
 *      dropped;
 *   5. end: the table was not dropped or rebuilt meanwhile (else
 *      EC_ESTALE: resolve again).
 * So an answer holds no deleted key and no stale score, and a key written
 * since the build is a candidate whenever its list is probed, as if the
 * build had seen it: the index needs no rebuild to stay right or fast. The
 * centroids stay those of the build: a table whose rows drifted far from
 * them is better served by a rebuild (ec_index_staleness_get says how many
 * rows were written since).
 *
 * Runs on the caller's thread, except cl_dynivf_list_keep, which the search's
 * threads call; nothing here writes shared memory; the snapshot's pointer
 * is swapped under its cache's lock.
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
/* Slots of a list's delta prefetched ahead of the one being read. */
#define PREFETCH_AHEAD 4u
/* Scores of rows against the centroids while assigning, at most (16 MiB). */
#define ASSIGN_FLOATS ((size_t)4 << 20)

static int table_view(ec_tensor *t, ec_index_ref *ref, ec_dyn_view *v)
{
    const ec_segment *seg = &t->c->seg;

    if (!ec_index_lookup(seg, t->t.id, EC_DYN_PART, ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' is not served any more: resolve it "
                                    "again", t->t.name);
    return ec_dyn_view_open(seg, ref->offset, t->t.id, t->t.row_bytes, v);
}

static void snap_put(struct cl_dsnap *sn)
{
    if (!sn || atomic_fetch_sub_explicit(&sn->refs, 1, memory_order_acq_rel) != 1)
        return;
    free(sn->slots);
    free(sn->slsn);
    free(sn->list);
    free(sn->lstart);
    free(sn->lent);
    free(sn->keep);
    free(sn->ready);
    free(sn);
}

/* The cache's snapshot with a reference, or NULL. */
static struct cl_dsnap *snap_get(struct cl_dyndelta *c)
{
    struct cl_dsnap *sn;

    pthread_mutex_lock(&c->lock);
    if ((sn = c->snap))
        atomic_fetch_add_explicit(&sn->refs, 1, memory_order_relaxed);
    pthread_mutex_unlock(&c->lock);
    return sn;
}

void cl_dyndelta_init(struct cl_dyndelta *c)
{
    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->lock, NULL);
}

void cl_dyndelta_destroy(struct cl_dyndelta *c)
{
    pthread_mutex_destroy(&c->lock);
    snap_put(c->snap);
    c->snap = NULL;
}

int cl_dynscratch_alloc(struct cl_dynscratch *w, const ec_tensor *t, size_t kp)
{
    size_t dim = (size_t)t->t.shape[1];

    memset(w, 0, sizeof(*w));
    w->X = malloc((size_t)BLOCK * dim * sizeof(float));
    w->P = malloc(cl_panel_floats(BLOCK, dim) * sizeof(float));
    w->norms = malloc(BLOCK * sizeof(float));
    w->keys = malloc(BLOCK * sizeof(int64_t));
    w->raw = malloc(EC_DYN_BATCH * t->t.row_bytes + 1);
    w->cd = malloc((kp ? kp : 1) * sizeof(struct cand));
    if (!w->X || !w->P || !w->norms || !w->keys || !w->raw || !w->cd)
        return ec_seterr(EC_ENOMEM, "approximate search of dynamic table '%s'", t->t.name);
    return 0;
}

void cl_dynscratch_free(struct cl_dynscratch *w)
{
    free(w->X);
    free(w->P);
    free(w->norms);
    free(w->keys);
    free(w->raw);
    free(w->C);
    free(w->cd);
    memset(w, 0, sizeof(*w));
}

/* w->C holds at least n floats. */
static int scratch_scores(struct cl_dynscratch *w, size_t n, const char *table)
{
    float *c;

    if (w->ccap >= n)
        return 0;
    if (!(c = realloc(w->C, n * sizeof(float))))
        return ec_seterr(EC_ENOMEM, "approximate search of dynamic table '%s': %zu scores",
                         table, n);
    w->C = c;
    w->ccap = n;
    return 0;
}

void cl_dynivf_free(struct cl_dynivf *d)
{
    snap_put(d->snap);
    memset(d, 0, sizeof(*d));
}

/* The nearest centroid of each of the m rows w->X into out, by the build's
 * key (IP and cosine: x.c, the largest; L2: 2 x.c - |c|^2; ties: the
 * smaller list). */
static void assign(struct cl_dynscratch *w, const struct cl_dynprobe *p, size_t m,
                   uint32_t *out)
{
    size_t nl = p->nlist;

    cl_panel_dots(w->X, m, p->dim, p->cpanel, nl, w->C, nl);
    for (size_t i = 0; i < m; i++)
        out[i] = cl_search_nearest(w->C + i * nl, nl,
                                   p->metric == EC_METRIC_L2 ? p->cnorms : NULL);
}

/* Room for n + 1 entries in sn's parallel arrays. */
static int grow(struct cl_dsnap *sn, uint64_t *cap)
{
    uint64_t c = *cap ? *cap * 2 : 256;
    uint64_t *a, *b;
    uint32_t *l;

    if (sn->n < *cap)
        return 0;
    if ((a = realloc(sn->slots, c * sizeof(*a))))
        sn->slots = a;
    if ((b = realloc(sn->slsn, c * sizeof(*b))))
        sn->slsn = b;
    if ((l = realloc(sn->list, c * sizeof(*l))))
        sn->list = l;
    if (!a || !b || !l)
        return ec_seterr(EC_ENOMEM, "the delta of a dynamic table: %llu slots",
                         (unsigned long long)c);
    *cap = c;
    return 0;
}

/* The delta of the table at d->lsn: from every slot's header, reusing the
 * lists of prev's slots whose lsn did not move (prev: a snapshot of the
 * same extent, or NULL). */
static int snap_scan(struct cl_dynivf *d, const struct cl_dynprobe *p,
                     const struct cl_dsnap *prev, struct cl_dynscratch *w,
                     struct cl_dsnap **out)
{
    ec_dtype dt = (ec_dtype)d->t->t.dtype;
    struct cl_dsnap *sn = calloc(1, sizeof(*sn));
    uint64_t cap = 0, j = 0, pend[BLOCK], *cur = NULL;
    size_t m = 0, ab = ASSIGN_FLOATS / p->nlist;
    int rc = 0;

    if (!sn)
        return ec_seterr(EC_ENOMEM, "the delta of dynamic table '%s'", d->t->t.name);
    ab = ab > BLOCK ? BLOCK : ab < 1 ? 1 : ab; /* rows assigned at once */
    if ((rc = scratch_scores(w, ab * p->nlist, d->t->t.name))) {
        free(sn);
        return rc;
    }
    atomic_init(&sn->refs, 1);
    sn->off = d->ref.offset;
    sn->eseq = d->ref.seq;
    sn->lsn = d->lsn;
    sn->nlist = p->nlist;
    for (uint64_t s = 0; s <= d->v.nslots && rc == 0; s++) {
        uint64_t lsn = 0;
        if (s < d->v.nslots) {
            int64_t key;
            int r;
            if (!ec_dyn_slot_peek(&d->v, s, &lsn) || lsn <= d->built_lsn)
                continue;
            if ((rc = grow(sn, &cap)))
                break;
            while (prev && j < prev->n && prev->slots[j] < s)
                j++;
            if (prev && j < prev->n && prev->slots[j] == s && prev->slsn[j] == lsn &&
                lsn <= prev->lsn) {
                /* The row it held when the last snapshot assigned it: a batch
                 * of lsn <= that snapshot's was whole before it, so the slot
                 * was not written since (a batch still being applied then
                 * may write one slot twice with one lsn; a slot mid-write
                 * peeks as UINT64_MAX). */
                sn->slots[sn->n] = s;
                sn->slsn[sn->n] = lsn;
                sn->list[sn->n++] = prev->list[j];
                continue;
            }
            /* New or rewritten: its row, to assign (a slot rewritten since
             * the peek holds a newer row, and its lsn moved: the next
             * snapshot assigns it again). */
            if ((r = ec_dyn_slot_read(&d->v, s, &key, w->raw)) < 0) {
                rc = r;
                break;
            }
            if (r == 0)
                continue;
            cl_to_f32(w->X + m * p->dim, w->raw, p->dim, dt);
            pend[m++] = sn->n;
            sn->slots[sn->n] = s;
            sn->slsn[sn->n++] = lsn;
            if (m < ab)
                continue;
        }
        if (m == 0)
            continue;
        {
            uint32_t lists[BLOCK];
            assign(w, p, m, lists);
            for (size_t i = 0; i < m; i++)
                sn->list[pend[i]] = lists[i];
        }
        m = 0;
    }
    sn->rows = p->rows;
    if (rc == 0 && (!(sn->lstart = calloc((size_t)p->nlist + 1, sizeof(uint64_t))) ||
                    !(sn->lent = malloc((sn->n ? sn->n : 1) * sizeof(uint64_t))) ||
                    !(sn->keep = calloc(p->rows ? p->rows : 1, sizeof(atomic_uchar))) ||
                    !(sn->ready = calloc(p->nlist, sizeof(atomic_uchar))) ||
                    !(cur = malloc(((size_t)p->nlist + 1) * sizeof(uint64_t)))))
        rc = ec_seterr(EC_ENOMEM, "the delta of dynamic table '%s' by list", d->t->t.name);
    if (rc) {
        free(cur);
        snap_put(sn);
        return rc;
    }
    for (uint64_t i = 0; i < sn->n; i++)
        sn->lstart[sn->list[i] + 1]++;
    for (uint32_t l = 0; l < p->nlist; l++)
        sn->lstart[l + 1] += sn->lstart[l];
    memcpy(cur, sn->lstart, ((size_t)p->nlist + 1) * sizeof(uint64_t));
    for (uint64_t i = 0; i < sn->n; i++)
        sn->lent[cur[sn->list[i]]++] = i;
    free(cur);
    *out = sn;
    return 0;
}

/* The snapshot of the delta at d->lsn into d->snap: the cache's, or a new
 * one (kept in the cache for the searches after this one). */
static int snap_at_lsn(struct cl_dynivf *d, const struct cl_dynprobe *p,
                       struct cl_dynscratch *w)
{
    struct cl_dsnap *prev = snap_get(d->cache), *sn;
    int rc;

    if (prev && (prev->off != d->ref.offset || prev->eseq != d->ref.seq ||
                 prev->nlist != p->nlist || prev->rows != p->rows)) {
        snap_put(prev); /* another table (extent) or index: nothing to reuse */
        prev = NULL;
    }
    if (prev && prev->lsn == d->lsn) {
        d->snap = prev;
        return 0;
    }
    rc = snap_scan(d, p, prev, w, &sn);
    snap_put(prev);
    if (rc)
        return rc;
    pthread_mutex_lock(&d->cache->lock);
    /* Concurrent searches: the snapshot of the larger lsn stays. */
    if (!d->cache->snap || d->cache->snap->off != sn->off || d->cache->snap->eseq != sn->eseq ||
        d->cache->snap->lsn <= sn->lsn) {
        prev = d->cache->snap;
        atomic_fetch_add_explicit(&sn->refs, 1, memory_order_relaxed);
        d->cache->snap = sn;
    } else {
        prev = NULL;
    }
    pthread_mutex_unlock(&d->cache->lock);
    snap_put(prev);
    d->snap = sn;
    return 0;
}

int cl_dynivf_begin(struct cl_dynivf *d, ec_tensor *t, uint64_t built_lsn,
                    struct cl_dyndelta *cache, const struct cl_dynprobe *p,
                    struct cl_dynscratch *w)
{
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
    /* Nothing written since the build: no delta, nothing to look up (a
     * batch being applied now may be missed, as any concurrent write). */
    if (d->lsn == built_lsn)
        return 0;
    return snap_at_lsn(d, p, w);
}

/* Score the m rows w->X (keys w->keys) against the nql queries Qb of
 * numbers qs into their heaps, with exact search's keys. */
static void offer_block(const struct cl_dynprobe *p, const struct cl_heaps *hp,
                        const uint32_t *qs, size_t nql, const float *Qb, size_t m,
                        struct cl_dynscratch *w)
{
    ec_metric metric = p->metric;

    if (cl_panel_pays(nql, p->dim)) {
        cl_panel_pack(w->X, m, p->dim, w->P);
        cl_panel_dots(Qb, nql, p->dim, w->P, m, w->C, m);
        if (metric != EC_METRIC_IP)
            cl_search_dots(NULL, 0, w->X, m, p->dim, NULL, 0, w->norms);
    } else {
        cl_search_dots(Qb, nql, w->X, m, p->dim, w->C, m,
                       metric == EC_METRIC_IP ? NULL : w->norms);
    }
    for (size_t i = 0; i < nql; i++) {
        uint32_t q = qs[i];
        for (size_t r = 0; r < m; r++) {
            float c = w->C[i * m + r], key;
            if (metric == EC_METRIC_IP)
                key = c;
            else if (metric == EC_METRIC_COSINE)
                key = w->norms[r] > 0 ? c / sqrtf(w->norms[r]) : 0.0f;
            else
                key = 2.0f * c - w->norms[r];
            if (key != key)
                key = -INFINITY;
            if (hp->hn[q] == p->kp && key < hp->thr[q])
                continue;
            cl_search_heap_offer(hp->heap + q * p->kp, &hp->hn[q], p->kp, &hp->thr[q], key,
                                 w->keys[r]);
        }
    }
}

int cl_dynivf_delta_list(const struct cl_dynivf *d, const struct cl_dynprobe *p, uint32_t l,
                         const float *Qb, const struct cl_heaps *hp, struct cl_dynscratch *w)
{
    ec_dtype dt = (ec_dtype)d->t->t.dtype;
    const struct cl_dsnap *sn = d->snap;
    const uint32_t *qs = p->qlist + p->qstart[l];
    size_t nql = p->qstart[l + 1] - p->qstart[l], m = 0, blk;
    uint64_t e0, e1;
    int rc;

    /* Nothing written since the build (a batch being applied now may be
     * missed, as any write concurrent with the search), or not in list l. */
    if (!sn || nql == 0 || (e0 = sn->lstart[l]) == (e1 = sn->lstart[l + 1]))
        return 0;
    blk = BLOCK_FLOATS / nql;
    blk = blk > BLOCK ? BLOCK : blk < 16 ? 16 : blk;
    if ((rc = scratch_scores(w, nql * blk, d->t->t.name)))
        return rc;
    /* The slots are known: each is prefetched PREFETCH_AHEAD reads ahead. */
    for (uint64_t e = e0; e < e1 && e < e0 + PREFETCH_AHEAD; e++)
        ec_dyn_slot_prefetch(&d->v, sn->slots[sn->lent[e]]);
    for (uint64_t e = e0; e <= e1; e++) {
        if (e < e1) {
            int64_t key;
            int r;
            if (e + PREFETCH_AHEAD < e1)
                ec_dyn_slot_prefetch(&d->v, sn->slots[sn->lent[e + PREFETCH_AHEAD]]);
            r = ec_dyn_slot_read(&d->v, sn->slots[sn->lent[e]], &key, w->raw);
            if (r < 0)
                return r;
            if (r == 0)
                continue; /* freed since the scan (a batch applied now) */
            cl_to_f32(w->X + m * p->dim, w->raw, p->dim, dt);
            w->keys[m++] = key;
            if (m < blk)
                continue;
        }
        if (m == 0)
            continue;
        offer_block(p, hp, qs, nql, Qb, m, w);
        m = 0;
    }
    return 0;
}

const atomic_uchar *cl_dynivf_list_keep(const struct cl_dynivf *d, uint32_t l,
                                        const int64_t *ids, uint64_t e0, uint64_t e1)
{
    struct cl_dsnap *sn = d->snap;
    int found[EC_DYN_BATCH];
    uint64_t lsn[EC_DYN_BATCH];

    /* Nothing written since the build: every listed key is as it was (a
     * batch being applied now may be missed; the finish drops a key gone). */
    if (d->lsn == d->built_lsn || !sn)
        return NULL;
    if (atomic_load_explicit(&sn->ready[l], memory_order_acquire))
        return sn->keep;
    /* A key stays out when absent (deleted or evicted since the build, or
     * a slot left half-written: cl_dynivf_end or the finish says) or when
     * written in (built, L] (the delta offers its row of now). A key
     * deleted or written after this look-up stays in: the finish scores
     * its row of now, or drops it. */
    for (uint64_t e = e0; e < e1; e += EC_DYN_BATCH) {
        size_t n = e1 - e < EC_DYN_BATCH ? (size_t)(e1 - e) : EC_DYN_BATCH;
        if (ec_dyn_find_many(&d->v, ids + e, n, found, lsn, NULL) < 0) {
            /* A key stays half-written: the others one by one, as before. */
            for (size_t i = 0; i < n; i++)
                found[i] = ec_dyn_key_lsn(&d->v, ids[e + i], &lsn[i]);
        }
        for (size_t i = 0; i < n; i++)
            atomic_store_explicit(&sn->keep[e + i],
                                  found[i] == 1 && (lsn[i] <= d->built_lsn || lsn[i] > d->lsn),
                                  memory_order_relaxed);
    }
    atomic_store_explicit(&sn->ready[l], 1, memory_order_release);
    return sn->keep;
}

int cl_dynivf_finish(const struct cl_dynivf *d, struct cl_dynscratch *w, ec_metric metric,
                     const float *query, size_t dim, const struct hent *h, uint32_t n,
                     size_t k, float *scores, int64_t *ids)
{
    ec_dtype dt = (ec_dtype)d->t->t.dtype;
    struct cand *cd = w->cd;
    uint32_t u = 0, m = 0;
    double qn = 0;

    for (uint32_t i = 0; i < n; i++)
        cd[i] = (struct cand){0, h[i].id};
    qsort(cd, n, sizeof(*cd), cl_search_cand_cmp); /* all scores 0: by id */
    for (uint32_t i = 0; i < n; i++)
        if (u == 0 || cd[u - 1].id != cd[i].id)
            cd[u++] = cd[i]; /* offered twice (by the delta and a list, a key that moved) */
    for (size_t j = 0; j < dim; j++)
        qn += (double)query[j] * query[j];
    qn = sqrt(qn);
    /* Each key's row of now, EC_DYN_BATCH keys looked up together; cd[m..)
     * is read before it is written (m <= i). */
    for (uint32_t i0 = 0; i0 < u; i0 += EC_DYN_BATCH) {
        uint32_t nb = u - i0 < EC_DYN_BATCH ? u - i0 : EC_DYN_BATCH;
        int64_t keys[EC_DYN_BATCH];
        int found[EC_DYN_BATCH], r;
        for (uint32_t j = 0; j < nb; j++)
            keys[j] = cd[i0 + j].id;
        if ((r = ec_dyn_find_many(&d->v, keys, nb, found, NULL, w->raw)) < 0)
            return r;
        for (uint32_t j = 0; j < nb; j++) {
            if (!found[j])
                continue; /* deleted since it was offered */
            cl_to_f32(w->X, w->raw + j * d->v.row_bytes, dim, dt);
            cd[m].id = keys[j];
            cd[m++].score = cl_search_exact(metric, query, qn, w->X, dim);
        }
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
