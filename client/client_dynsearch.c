/*
 * client_dynsearch.c - exact top-k search over a dynamic table
 * (ec_search on a tensor made dynamic; include/embcache_dynamic.h).
 *
 * A dynamic table has no partitions: its rows are slots of its extent,
 * each live one holding a key and a row (shm/dyntable.h). The search reads
 * the slots in order, each consistently (a slot rewritten under the copy is
 * read again, one whose key moved to a newer slot is skipped), scores
 * blocks of them with exact search's kernel (cl_search_dots) against every
 * query, keeps per-query heaps of keys, and answers through exact search's
 * last step (cl_search_finish): the candidates read again by key and scored
 * in double precision, equal scores in the order of their keys. A key
 * updated while the scan runs is scored with one of its rows, or missed by
 * that scan when its new slot was already passed; a key deleted before the
 * candidates are read again makes the search start over (at most 3 times).
 * One thread, the caller's; no BLAS (the rows are not contiguous).
 */
#include "client/client_impl.h"
#include "client/search_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "shm/dyntable.h"
#include "shm/index.h"

#define BLOCK 1024u

static int dyn_search_once(ec_tensor *t, const float *queries, size_t nq, size_t dim,
                           size_t k, ec_metric metric, float *scores, int64_t *ids)
{
    const ec_segment *seg = &t->c->seg;
    ec_dtype dt = (ec_dtype)t->t.dtype;
    size_t rb = t->t.row_bytes, kp, m = 0;
    ec_index_ref ref;
    ec_dyn_view v;
    float *qs = NULL, *X = NULL, *C = NULL, *norms = NULL, *thr = NULL, *fbuf = NULL;
    uint8_t *raw = NULL;
    int64_t *keys = NULL, *fids = NULL;
    struct hent *heap = NULL;
    struct cand *cd = NULL;
    uint32_t *hn = NULL;
    uint64_t live;
    int rc;

    if (!ec_index_lookup(seg, t->t.id, EC_DYN_PART, &ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' is not served any more: resolve it "
                                    "again", t->t.name);
    if ((rc = ec_dyn_view_open(seg, ref.offset, t->t.id, rb, &v)))
        return rc;
    live = atomic_load_explicit(&v.hdr->live, memory_order_relaxed);
    {
        size_t slack = k / 4 < 8 ? 8 : k / 4 > 64 ? 64 : k / 4;
        kp = k + slack;
        if (kp > live + BLOCK)
            kp = (size_t)live + BLOCK; /* keys may come in during the scan */
    }
    qs = malloc(nq * dim * sizeof(*qs));
    X = malloc((size_t)BLOCK * dim * sizeof(*X));
    C = malloc(nq * BLOCK * sizeof(*C));
    norms = malloc(BLOCK * sizeof(*norms));
    keys = malloc(BLOCK * sizeof(*keys));
    raw = malloc(rb * BLOCK);
    fids = malloc(BLOCK * sizeof(*fids));
    fbuf = malloc((size_t)BLOCK * dim * sizeof(*fbuf));
    thr = malloc(nq * sizeof(*thr));
    hn = calloc(nq, sizeof(*hn));
    heap = malloc(nq * kp * sizeof(*heap));
    cd = malloc(kp * sizeof(*cd));
    if (!qs || !X || !C || !norms || !keys || !raw || !fids || !fbuf || !thr || !hn || !heap ||
        !cd) {
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
        thr[q] = -INFINITY;
    }
    for (uint64_t s = 0; s <= v.nslots; s++) {
        if (s < v.nslots) {
            int64_t key;
            int r = ec_dyn_slot_read(&v, s, &key, raw);
            if (r < 0) {
                rc = r;
                goto out;
            }
            if (r == 0)
                continue;
            cl_to_f32(X + m * dim, raw, dim, dt);
            keys[m++] = key;
            if (m < BLOCK)
                continue;
        }
        if (m == 0)
            continue;
        cl_search_dots(qs, nq, X, m, dim, C, m, metric == EC_METRIC_IP ? NULL : norms);
        for (size_t q = 0; q < nq; q++)
            for (size_t r = 0; r < m; r++) {
                float c = C[q * m + r], key;
                if (metric == EC_METRIC_IP)
                    key = c;
                else if (metric == EC_METRIC_COSINE)
                    key = norms[r] > 0 ? c / sqrtf(norms[r]) : 0.0f;
                else
                    key = 2.0f * c - norms[r];
                if (key != key)
                    key = -INFINITY;
                if (hn[q] == kp && key < thr[q])
                    continue;
                cl_search_heap_offer(heap + q * kp, &hn[q], kp, &thr[q], key, keys[r]);
            }
        m = 0;
    }
    if (!ec_index_still_valid(&ref)) {
        rc = ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped or rebuilt during the "
                                  "search: resolve it again", t->t.name);
        goto out;
    }
    {
        struct cl_finish f = {.t = t, .metric = metric, .dtype = dt, .dim = dim, .k = k,
                              .rpp = BLOCK, .ids = fids, .buf = fbuf, .raw = raw, .cd = cd};
        rc = 0;
        for (size_t q = 0; q < nq && rc == 0; q++)
            rc = cl_search_finish(&f, queries + q * dim, heap + q * kp, hn[q], scores + q * k,
                                  ids + q * k);
    }
out:
    free(qs);
    free(X);
    free(C);
    free(norms);
    free(keys);
    free(raw);
    free(fids);
    free(fbuf);
    free(thr);
    free(hn);
    free(heap);
    free(cd);
    return rc;
}

int cl_dyn_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                  ec_metric metric, float *scores, int64_t *ids)
{
    int rc = EC_ENOENT;

    for (int tries = 0; tries < 3 && rc == EC_ENOENT; tries++)
        rc = dyn_search_once(t, queries, nq, dim, k, metric, scores, ids);
    return rc;
}
