/*
 * client_dyn.c - dynamic tables in the client (include/embcache_dynamic.h):
 * reading rows by key from the read-only mapping (shm/dyntable.h), and the
 * requests that change a table or make one (sent to the daemon).
 *
 * A read looks the table up in the partition index as (tensor,
 * EC_DYN_PART) once per call, validates its header against the tensor,
 * reads each key's row (lock-free: a slot reused under a copy is read
 * again), and checks the index entry at the end: a table the daemon
 * dropped or rebuilt meanwhile makes the whole call EC_ESTALE, never a row
 * from reused memory. Any thread; no system call.
 */
#include "client/client_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "shm/dyntable.h"
#include "shm/index.h"

#define PREFETCH_AHEAD 8

static int open_table(ec_tensor *t, ec_index_ref *ref, ec_dyn_view *v)
{
    const ec_segment *seg = &t->c->seg;
    int rc;

    if ((rc = cl_stale(t->c)))
        return rc;
    if (atomic_load_explicit(&t->mode, memory_order_relaxed) != EC_CACHE_DYNAMIC)
        return ec_seterr(EC_EINVAL, "tensor '%s' of model '%s' is not a dynamic table",
                         t->t.name, t->t.model);
    if (!ec_index_lookup(seg, t->t.id, EC_DYN_PART, ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' of model '%s' is not served any more "
                                    "(retired, or the daemon restarted): resolve it again",
                         t->t.name, t->t.model);
    return ec_dyn_view_open(seg, ref->offset, t->t.id, t->t.row_bytes, v);
}

/* Rows of keys into out (as dst), zeros and found[i] = 0 for absent keys
 * (strict: EC_ENOENT at the first). */
static int dyn_read(ec_tensor *t, const int64_t *keys, size_t n, void *out, ec_dtype dst,
                    uint8_t *found, size_t *nfound, bool strict)
{
    ec_index_ref ref;
    ec_dyn_view v;
    uint64_t rb = t->t.row_bytes, retries = 0, esz = ec_dtype_size((ec_dtype)t->t.dtype);
    uint64_t orb = esz ? rb / esz * ec_dtype_size(dst) : rb;
    bool convert = dst != (ec_dtype)t->t.dtype;
    uint8_t *tmp = NULL;
    size_t nf = 0;
    int rc;

    if ((rc = open_table(t, &ref, &v)))
        return rc;
    if (convert && !(tmp = malloc(rb)))
        return ec_seterr(EC_ENOMEM, "a row of %llu bytes", (unsigned long long)rb);
    for (size_t i = 0; i < n; i++) {
        uint8_t *o = (uint8_t *)out + i * orb;
        if (i + PREFETCH_AHEAD < n)
            ec_dyn_prefetch(&v, keys[i + PREFETCH_AHEAD]);
        rc = ec_dyn_find(&v, keys[i], convert ? tmp : o, &retries);
        if (rc < 0)
            goto out;
        if (rc == 0) {
            if (strict) {
                rc = ec_seterr(EC_ENOENT, "key %lld (ids[%zu]) is not in dynamic table '%s' "
                                          "of model '%s'", (long long)keys[i], i, t->t.name,
                               t->t.model);
                goto out;
            }
            memset(o, 0, orb);
        } else if (convert) {
            const void *src = tmp;
            size_t zero = 0;
            ec_gather_desc g = {.src = &src, .n = 1, .row_bytes = rb,
                                .src_dtype = (ec_dtype)t->t.dtype, .dst_dtype = dst,
                                .dst = o, .dst_rows = &zero, .device = -1};
            if ((rc = ec_cpu_gather(&g)))
                goto out;
        }
        if (found)
            found[i] = rc == 1;
        nf += rc == 1;
    }
    rc = 0;
    if (!ec_index_still_valid(&ref))
        rc = ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped or rebuilt during the read: "
                                  "resolve it again", t->t.name);
out:
    free(tmp);
    if (rc == 0) {
        ec_client *c = t->c;
        cl_count(&c->session->gathers, 1);
        cl_count(&c->session->rows, n);
        cl_count(&c->session->hits, nf);
        cl_count(&c->session->misses, n - nf);
        cl_count(&c->session->retries, retries);
        if (t->tstat) {
            cl_count(&t->tstat->rows, n);
            cl_count(&t->tstat->hits, nf);
        }
        if (nfound)
            *nfound = nf;
    }
    return rc;
}

int cl_gather_dyn(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst)
{
    return dyn_read(t, ids, n, out, dst, NULL, NULL, true);
}

int ec_rows_find(ec_tensor *t, const int64_t *keys, size_t n, void *out, size_t out_size,
                 uint8_t *found, size_t *nfound)
{
    if (!t || (n && (!keys || !out)))
        return ec_seterr(EC_EINVAL, "ec_rows_find: NULL argument");
    if (n > SIZE_MAX / t->t.row_bytes || out_size < n * t->t.row_bytes)
        return ec_seterr(EC_EINVAL, "output buffer of %zu bytes is too small for %zu rows of "
                                    "%llu bytes", out_size, n,
                         (unsigned long long)t->t.row_bytes);
    return dyn_read(t, keys, n, out, (ec_dtype)t->t.dtype, found, nfound, false);
}

int ec_rows_info(ec_tensor *t, ec_dyn_info *out)
{
    ec_index_ref ref;
    ec_dyn_view v;
    int rc;

    if (!t || !out)
        return ec_seterr(EC_EINVAL, "ec_rows_info: NULL argument");
    if ((rc = open_table(t, &ref, &v)))
        return rc;
    out->capacity = v.capacity;
    out->keys = atomic_load_explicit(&v.hdr->live, memory_order_relaxed);
    out->lsn = atomic_load_explicit(&v.hdr->lsn, memory_order_relaxed);
    out->puts = atomic_load_explicit(&v.hdr->puts, memory_order_relaxed);
    out->deletes = atomic_load_explicit(&v.hdr->deletes, memory_order_relaxed);
    out->evictions = atomic_load_explicit(&v.hdr->evictions, memory_order_relaxed);
    out->policy = (ec_dyn_policy)0;
    if (!ec_index_still_valid(&ref))
        return ec_seterr(EC_ESTALE, "dynamic table '%s' was dropped or rebuilt: resolve it "
                                    "again", t->t.name);
    return 0;
}

/* ---- requests -------------------------------------------------------- */

static void get_result(ec_rbuf *r, ec_rows_result *res)
{
    res->lsn = ec_get_u64(r);
    res->inserted = ec_get_u64(r);
    res->updated = ec_get_u64(r);
    res->deleted = ec_get_u64(r);
    res->missing = ec_get_u64(r);
    res->evicted = ec_get_u64(r);
}

/* Write a batch into the client's memfd (made once, grown, reused: a
 * stream of updates writes into pages that are already there). The daemon
 * copies it before it uses it, so a later batch cannot change an earlier
 * one. Called with c->lock held. */
static int batch_file_locked(ec_client *c, const int64_t *keys, size_t n, const void *rows,
                             uint64_t row_bytes, uint64_t bytes)
{
    struct stat st;

    if (c->batch_fd < 0 &&
        (c->batch_fd = memfd_create("embcache-rows", MFD_CLOEXEC)) < 0)
        return ec_seterr_errno(EC_EIO, errno, "memfd_create for a batch of %zu rows", n);
    if (fstat(c->batch_fd, &st) < 0 ||
        ((uint64_t)st.st_size < bytes && ftruncate(c->batch_fd, (off_t)bytes) < 0) ||
        pwrite(c->batch_fd, keys, n * 8, 0) != (ssize_t)(n * 8) ||
        (row_bytes && pwrite(c->batch_fd, rows, n * row_bytes, (off_t)(n * 8)) !=
                          (ssize_t)(n * row_bytes)))
        return ec_seterr_errno(EC_EIO, errno, "writing a batch of %zu rows", n);
    return 0;
}

/* A batch to the daemon: inline when it fits a message, else in the
 * client's memfd (batch_file_locked). */
static int send_batch(ec_tensor *t, uint16_t op, const int64_t *keys, size_t n,
                      const void *rows, uint64_t row_bytes, ec_rows_result *res)
{
    ec_client *c = t->c;
    uint64_t bytes = (uint64_t)n * (8 + row_bytes);
    bool inl = bytes + 64 <= EC_MSG_MAX - EC_MSG_HDR;
    ec_rows_result got = {0};
    int rc;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;

    if ((rc = cl_stale(c)))
        return rc;
    pthread_mutex_lock(&c->lock);
    if (!inl && (rc = batch_file_locked(c, keys, n, rows, row_bytes, bytes)) < 0) {
        pthread_mutex_unlock(&c->lock);
        return rc;
    }
    req = cl_begin(c, &w, op);
    ec_put_u32(&w, t->t.id);
    ec_put_u32(&w, (uint32_t)n);
    if (op == EC_OP_ROWS_PUT)
        ec_put_u64(&w, row_bytes);
    ec_put_u32(&w, inl);
    if (inl) {
        ec_put_raw(&w, keys, n * 8);
        if (row_bytes)
            ec_put_raw(&w, rows, n * row_bytes);
    }
    rc = cl_rpc(c, &w, req, inl ? NULL : &c->batch_fd, !inl, &r, NULL, NULL, 0);
    if (rc == 0) {
        get_result(&r, &got);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed reply to a row update");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && res)
        *res = got;
    return rc;
}

int ec_rows_put(ec_tensor *t, const int64_t *keys, size_t n, const void *rows,
                size_t rows_bytes, ec_rows_result *res)
{
    if (!t || (n && (!keys || !rows)))
        return ec_seterr(EC_EINVAL, "ec_rows_put: NULL argument");
    if (n > EC_ROWS_BATCH_MAX)
        return ec_seterr(EC_EINVAL, "a batch of %zu rows: at most %u per call", n,
                         EC_ROWS_BATCH_MAX);
    if (rows_bytes != n * t->t.row_bytes)
        return ec_seterr(EC_EINVAL, "%zu bytes of rows for %zu keys of tensor '%s', whose rows "
                                    "have %llu bytes", rows_bytes, n, t->t.name,
                         (unsigned long long)t->t.row_bytes);
    if (n == 0) {
        if (res)
            memset(res, 0, sizeof(*res));
        return 0;
    }
    return send_batch(t, EC_OP_ROWS_PUT, keys, n, rows, t->t.row_bytes, res);
}

int ec_rows_delete(ec_tensor *t, const int64_t *keys, size_t n, ec_rows_result *res)
{
    if (!t || (n && !keys))
        return ec_seterr(EC_EINVAL, "ec_rows_delete: NULL argument");
    if (n > EC_ROWS_BATCH_MAX)
        return ec_seterr(EC_EINVAL, "a batch of %zu keys: at most %u per call", n,
                         EC_ROWS_BATCH_MAX);
    if (n == 0) {
        if (res)
            memset(res, 0, sizeof(*res));
        return 0;
    }
    return send_batch(t, EC_OP_ROWS_DEL, keys, n, NULL, 0, res);
}

int ec_model_dynamic(ec_client *c, const char *model, const char *version, const char *tensor,
                     uint64_t capacity, ec_dyn_policy policy)
{
    ec_rows_result none;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !version || !tensor)
        return ec_seterr(EC_EINVAL, "ec_model_dynamic: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_DYN_SET);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    ec_put_str(&w, tensor);
    ec_put_u64(&w, capacity);
    ec_put_u32(&w, (uint32_t)policy);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        get_result(&r, &none);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed DYN_SET reply");
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_model_snapshot(ec_client *c, const char *model, const char *version,
                      int64_t new_version, int64_t *version_out)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    uint64_t v = 0;
    int rc;

    if (!c || !model || !version || new_version < 0)
        return ec_seterr(EC_EINVAL, "ec_model_snapshot: NULL argument or negative version");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_SNAPSHOT);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    ec_put_u64(&w, (uint64_t)new_version);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        v = ec_get_u64(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed SNAPSHOT reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && version_out)
        *version_out = (int64_t)v;
    return rc;
}

int ec_client_dyn_tables(ec_client *c, int (*cb)(const ec_dyn_table_stat *t, void *arg),
                         void *arg)
{
    ec_dyn_table_stat *all = NULL;
    uint32_t req, n = 0;
    ec_wbuf w;
    ec_rbuf r;
    int rc;

    if (!c || !cb)
        return ec_seterr(EC_EINVAL, "ec_client_dyn_tables: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_DYN_STATS);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        n = ec_get_u32(&r);
        if (n > 1024 || !(all = calloc(n ? n : 1, sizeof(*all))))
            rc = ec_seterr(n > 1024 ? EC_EPROTO : EC_ENOMEM, "DYN_STATS reply of %u tables", n);
        for (uint32_t i = 0; rc == 0 && i < n; i++) {
            ec_dyn_table_stat *t = &all[i];
            (void)ec_get_u32(&r);
            ec_get_str(&r, t->model, sizeof(t->model));
            t->version = (int64_t)ec_get_u64(&r);
            ec_get_str(&r, t->tensor, sizeof(t->tensor));
            t->capacity = ec_get_u64(&r);
            t->keys = ec_get_u64(&r);
            t->row_bytes = ec_get_u64(&r);
            t->bytes = ec_get_u64(&r);
            t->policy = (ec_dyn_policy)ec_get_u32(&r);
            t->lsn = ec_get_u64(&r);
            t->base_lsn = ec_get_u64(&r);
            t->puts = ec_get_u64(&r);
            t->inserts = ec_get_u64(&r);
            t->updates = ec_get_u64(&r);
            t->deletes = ec_get_u64(&r);
            t->evictions = ec_get_u64(&r);
            t->refused = ec_get_u64(&r);
        }
        if (rc == 0 && !ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed DYN_STATS reply");
    }
    pthread_mutex_unlock(&c->lock);
    for (uint32_t i = 0; rc == 0 && i < n; i++)
        rc = cb(&all[i], arg);
    free(all);
    return rc;
}
