/*
 * client_admin.c - libembcache's administration calls: import, aliases,
 * model index lookups, prewarm, evict, refresh, residency and cache-mode
 * policies, retire, catalog listings, statistics and configuration reload.
 * Each is one request to the daemon (a listing, several), under the
 * client's mutex.
 */
#include "client/client_impl.h"

int ec_model_import(ec_client *c, const ec_import_opts *opts, const char *const *paths,
                    size_t n, uint32_t *tensors_out)
{
    int fds[EC_MSG_MAX_FDS];
    size_t opened = 0;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req, tensors = 0;
    int rc;

    if (!c || !opts || !opts->model || !paths)
        return ec_seterr(EC_EINVAL, "ec_model_import: NULL argument");
    if (n == 0 || n > 64)
        return ec_seterr(EC_EINVAL, "import takes 1..64 files, %zu given", n);
    if (opts->params_json && strlen(opts->params_json) > EC_PARAMS_MAX)
        return ec_seterr(EC_ETOOBIG, "params JSON is longer than %u bytes", EC_PARAMS_MAX);
    /* An input file that is not there is EC_ENOENT; one that is there but
     * cannot be imported as it is (unreadable by this process, not a
     * regular file, and later in the daemon: malformed content) is
     * EC_EFORMAT (or EC_EDTYPE); EC_EIO is left for a system failure.
     * O_NONBLOCK: opening a FIFO must not wait for a writer. */
    for (; opened < n; opened++) {
        struct stat st;
        fds[opened] = open(paths[opened], O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        if (fds[opened] < 0) {
            int e = errno;
            if (e == ENOENT || e == ENOTDIR)
                rc = ec_seterr_errno(EC_ENOENT, e, "cannot open input file %s",
                                     paths[opened]);
            else if (e == EACCES || e == EPERM || e == ELOOP || e == ENXIO || e == ENODEV)
                rc = ec_seterr_errno(EC_EFORMAT, e, "cannot open input file %s (import "
                                     "reads it with your permissions)", paths[opened]);
            else if (e == ENAMETOOLONG)
                rc = ec_seterr_errno(EC_EINVAL, e, "cannot open input file %s",
                                     paths[opened]);
            else
                rc = ec_seterr_errno(EC_EIO, e, "cannot open input file %s", paths[opened]);
            goto out;
        }
        if (fstat(fds[opened], &st) < 0 || !S_ISREG(st.st_mode)) {
            opened++;
            rc = ec_seterr(EC_EFORMAT, "%s is not a regular file: import takes .npy and "
                                       ".safetensors files", paths[opened - 1]);
            goto out;
        }
    }
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_IMPORT);
    ec_put_str(&w, opts->model);
    ec_put_i64(&w, opts->version);
    ec_put_i64(&w, opts->round);
    ec_put_str(&w, opts->params_json);
    ec_put_u64(&w, opts->partition_bytes);
    ec_put_u32(&w, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        const char *base = strrchr(paths[i], '/');
        ec_put_str(&w, base ? base + 1 : paths[i]);
    }
    rc = cl_rpc(c, &w, req, fds, (int)n, &r, NULL, NULL, 0);
    if (rc == 0) {
        tensors = ec_get_u32(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed IMPORT reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && tensors_out)
        *tensors_out = tensors;
out:
    for (size_t i = 0; i < opened; i++)
        close(fds[i]);
    return rc;
}

int ec_model_alias(ec_client *c, const char *model, const char *alias, int64_t version)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !alias)
        return ec_seterr(EC_EINVAL, "ec_model_alias: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_ALIAS);
    ec_put_str(&w, model);
    ec_put_str(&w, alias);
    ec_put_i64(&w, version);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0 && !ec_rbuf_done(&r))
        rc = ec_seterr(EC_EPROTO, "malformed ALIAS reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_model_find(ec_client *c, const char *model, int64_t round, const char *params_json,
                  int64_t *version_out)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int64_t v = 0;
    int rc;

    if (!c || !model || !version_out)
        return ec_seterr(EC_EINVAL, "ec_model_find: NULL argument");
    if (params_json && strlen(params_json) > EC_PARAMS_MAX)
        return ec_seterr(EC_ETOOBIG, "params JSON is longer than %u bytes", EC_PARAMS_MAX);
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_FIND);
    ec_put_str(&w, model);
    ec_put_i64(&w, round);
    ec_put_str(&w, params_json);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        v = ec_get_i64(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed FIND reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0)
        *version_out = v;
    return rc;
}

/* A request of (model, version string) and an optional u32, answered with
 * one u64. */
static int version_rpc(ec_client *c, uint16_t op, const char *model, const char *version,
                       const uint32_t *flags, uint64_t *u64_out)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    uint64_t v = 0;
    int rc;

    if (!c || !model || !version)
        return ec_seterr(EC_EINVAL, "NULL model or version");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, op);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    if (flags)
        ec_put_u32(&w, *flags);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        v = ec_get_u64(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed reply to op %u", op);
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && u64_out)
        *u64_out = v;
    return rc;
}

int ec_model_prewarm(ec_client *c, const char *model, const char *version, unsigned flags,
                     ec_prewarm_progress *out)
{
    ec_prewarm_progress p = {0};
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !version || !out)
        return ec_seterr(EC_EINVAL, "ec_model_prewarm: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_PREWARM);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    ec_put_u32(&w, flags);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        p.version = ec_get_i64(&r);
        p.partitions = ec_get_u64(&r);
        p.done = ec_get_u64(&r);
        p.failed = ec_get_u64(&r);
        p.bytes = ec_get_u64(&r);
        p.finished = (int)ec_get_u32(&r);
        if (!ec_rbuf_done(&r) || p.done + p.failed > p.partitions)
            rc = ec_seterr(EC_EPROTO, "malformed PREWARM reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0)
        *out = p;
    return rc;
}

int ec_model_evict(ec_client *c, const char *model, const char *version, uint64_t *bytes_out)
{
    return version_rpc(c, EC_OP_EVICT, model, version, NULL, bytes_out);
}

int ec_model_refresh(ec_client *c, const char *model, const char *version,
                     uint64_t *changed_out)
{
    return version_rpc(c, EC_OP_REFRESH, model, version, NULL, changed_out);
}

int ec_model_policy(ec_client *c, const char *model, uint64_t min_resident_bytes,
                    double min_request_rate)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model)
        return ec_seterr(EC_EINVAL, "ec_model_policy: NULL argument");
    if (!(min_request_rate >= 0 && min_request_rate < 1e15))
        return ec_seterr(EC_EINVAL, "min_request_rate %g must be >= 0", min_request_rate);
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_POLICY);
    ec_put_str(&w, model);
    ec_put_u64(&w, min_resident_bytes);
    ec_put_u64(&w, (uint64_t)(min_request_rate * 1000.0 + 0.5));
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0 && !ec_rbuf_done(&r))
        rc = ec_seterr(EC_EPROTO, "malformed POLICY reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_model_retire(ec_client *c, const char *model, int64_t version, int force)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model)
        return ec_seterr(EC_EINVAL, "ec_model_retire: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_RETIRE);
    ec_put_str(&w, model);
    ec_put_i64(&w, version);
    ec_put_u32(&w, force ? 1 : 0);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0 && !ec_rbuf_done(&r))
        rc = ec_seterr(EC_EPROTO, "malformed RETIRE reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

/* Parse one LIST reply page and call cb; returns cb's value, 0, or an error. */
static int list_page(ec_rbuf *r, uint32_t n, ec_list_cb cb, void *arg,
                     ec_version_info *cur, char *model, char *params, char *aliases)
{
    for (uint32_t k = 0; k < n; k++) {
        uint8_t kind = ec_get_u8(r);
        int rc;

        if (kind == EC_LIST_VERSION) {
            ec_get_str(r, model, EC_NAME_MAX + 1);
            cur->version = ec_get_i64(r);
            cur->round = ec_get_i64(r);
            ec_get_str(r, params, EC_PARAMS_MAX + 1);
            ec_get_str(r, aliases, 4096);
            cur->created_unix = ec_get_i64(r);
            cur->tensors = ec_get_u32(r);
            cur->bytes = ec_get_u64(r);
            if (r->bad)
                break;
            rc = cb(cur, NULL, arg);
        } else if (kind == EC_LIST_TENSOR) {
            char name[EC_NAME_MAX + 1];
            ec_tensor_listing tl = {.name = name};
            ec_get_str(r, name, sizeof(name));
            tl.dtype = (ec_dtype)ec_get_u32(r);
            tl.ndim = ec_get_u32(r);
            if (tl.ndim > EC_MAX_DIMS || !ec_dtype_valid(tl.dtype)) {
                r->bad = true;
                break;
            }
            for (uint32_t d = 0; d < tl.ndim; d++)
                tl.shape[d] = ec_get_u64(r);
            tl.partitions = ec_get_u64(r);
            tl.bytes = ec_get_u64(r);
            if (r->bad || !cur->model[0])
                break;
            rc = cb(cur, &tl, arg);
        } else {
            r->bad = true;
            break;
        }
        if (rc)
            return rc;
    }
    if (!ec_rbuf_done(r))
        return ec_seterr(EC_EPROTO, "malformed LIST reply");
    return 0;
}

int ec_catalog_list(ec_client *c, const char *model, ec_list_cb cb, void *arg)
{
    static _Thread_local char mname[EC_NAME_MAX + 1], params[EC_PARAMS_MAX + 1], aliases[4096];
    ec_version_info cur = {.model = mname, .params_json = params, .aliases = aliases};
    uint32_t vcur = 0, tcur = 0;
    int rc;

    if (!c || !cb)
        return ec_seterr(EC_EINVAL, "ec_catalog_list: NULL argument");
    mname[0] = '\0';
    for (;;) {
        ec_wbuf w;
        ec_rbuf r;
        uint32_t req, n;

        pthread_mutex_lock(&c->lock);
        req = cl_begin(c, &w, EC_OP_LIST);
        ec_put_str(&w, model);
        ec_put_u32(&w, vcur);
        ec_put_u32(&w, tcur);
        rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
        if (rc == 0) {
            vcur = ec_get_u32(&r);
            tcur = ec_get_u32(&r);
            n = ec_get_u32(&r);
            /* The page lives in c->rbuf: parse it before unlocking. Copy it
             * out so the callback may call into this client. */
            uint8_t *copy = malloc(r.len);
            if (!copy) {
                rc = ec_seterr(EC_ENOMEM, "list page");
            } else {
                memcpy(copy, r.p, r.len);
                r.p = copy;
                pthread_mutex_unlock(&c->lock);
                rc = list_page(&r, n, cb, arg, &cur, mname, params, aliases);
                free(copy);
                if (rc || (vcur == 0 && tcur == 0))
                    return rc;
                continue;
            }
        }
        pthread_mutex_unlock(&c->lock);
        return rc;
    }
}

int ec_client_stats(ec_client *c, ec_stat_cb cb, void *arg)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req, n;
    int rc;

    if (!c || !cb)
        return ec_seterr(EC_EINVAL, "ec_client_stats: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_STATS);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        n = ec_get_u32(&r);
        for (uint32_t i = 0; i < n && rc == 0 && !r.bad; i++) {
            char name[128];
            uint64_t v;
            ec_get_str(&r, name, sizeof(name));
            v = ec_get_u64(&r);
            if (!r.bad)
                rc = cb(name, v, arg);
        }
        if (rc == 0 && !ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed STATS reply");
    }
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_model_cache_mode(ec_client *c, const char *model, const char *tensor,
                        ec_cache_mode mode)
{
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model)
        return ec_seterr(EC_EINVAL, "ec_model_cache_mode: NULL argument");
    if (mode != EC_CACHE_AUTO && mode != EC_CACHE_PARTITIONS && mode != EC_CACHE_ROWS)
        return ec_seterr(EC_EINVAL, "cache mode %d is not EC_CACHE_AUTO, _PARTITIONS or _ROWS",
                         (int)mode);
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_MODE);
    ec_put_str(&w, model);
    ec_put_str(&w, tensor ? tensor : "");
    ec_put_u32(&w, (uint32_t)mode);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0 && !ec_rbuf_done(&r))
        rc = ec_seterr(EC_EPROTO, "malformed MODE reply");
    pthread_mutex_unlock(&c->lock);
    return rc;
}

int ec_client_tensor_stats(ec_client *c, ec_tensor_stats_cb cb, void *arg)
{
    uint32_t cursor = 0;

    if (!c || !cb)
        return ec_seterr(EC_EINVAL, "ec_client_tensor_stats: NULL argument");
    for (;;) {
        ec_proto_tensor_stat *v = NULL;
        uint32_t next = 0, n = 0, got = 0;
        ec_wbuf w;
        ec_rbuf r;
        uint32_t req;
        int rc;

        pthread_mutex_lock(&c->lock);
        req = cl_begin(c, &w, EC_OP_TENSORS);
        ec_put_u32(&w, cursor);
        rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
        if (rc == 0) {
            next = ec_get_u32(&r);
            n = ec_get_u32(&r);
            /* The page lives in c->rbuf: parse it before unlocking. */
            if (!r.bad && n && !(v = calloc(n, sizeof(*v))))
                rc = ec_seterr(EC_ENOMEM, "tensor statistics");
            for (; rc == 0 && got < n; got++)
                rc = ec_get_tensor_stat(&r, &v[got]);
            if (rc == 0 && (!ec_rbuf_done(&r) || (next && next <= cursor)))
                rc = ec_seterr(EC_EPROTO, "malformed TENSORS reply");
        }
        pthread_mutex_unlock(&c->lock);
        for (uint32_t i = 0; rc == 0 && i < n; i++) {
            ec_tensor_stats t = {.model = v[i].model, .version = v[i].version,
                                 .tensor = v[i].name, .mode = (ec_cache_mode)v[i].mode,
                                 .policy = (ec_cache_mode)v[i].policy,
                                 .file_version = v[i].file_version, .bytes = v[i].bytes,
                                 .row_bytes = v[i].row_bytes,
                                 .resident_bytes = v[i].resident_bytes,
                                 .resident_rows = v[i].resident_rows,
                                 .rows_served = v[i].rows_served, .hits = v[i].hits,
                                 .row_faults = v[i].row_faults, .bytes_read = v[i].bytes_read};
            rc = cb(&t, arg);
        }
        free(v);
        if (rc || next == 0)
            return rc;
        cursor = next;
    }
}

int ec_model_upgrade(ec_client *c, const char *model, const char *version,
                     uint32_t *upgraded_out)
{
    uint32_t n = 0;
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c || !model || !version)
        return ec_seterr(EC_EINVAL, "ec_model_upgrade: NULL argument");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_UPGRADE);
    ec_put_str(&w, model);
    ec_put_str(&w, version);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        n = ec_get_u32(&r);
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed UPGRADE reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && upgraded_out)
        *upgraded_out = n;
    return rc;
}

int ec_daemon_reload(ec_client *c, char *summary, size_t cap)
{
    char line[2048] = "";
    ec_wbuf w;
    ec_rbuf r;
    uint32_t req;
    int rc;

    if (!c)
        return ec_seterr(EC_EINVAL, "ec_daemon_reload: NULL client");
    pthread_mutex_lock(&c->lock);
    req = cl_begin(c, &w, EC_OP_RELOAD);
    rc = cl_rpc(c, &w, req, NULL, 0, &r, NULL, NULL, 0);
    if (rc == 0) {
        ec_get_str(&r, line, sizeof(line));
        if (!ec_rbuf_done(&r))
            rc = ec_seterr(EC_EPROTO, "malformed RELOAD reply");
    }
    pthread_mutex_unlock(&c->lock);
    if (rc == 0 && summary && cap)
        snprintf(summary, cap, "%s", line);
    return rc;
}
