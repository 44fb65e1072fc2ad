/*
 * server_admin.c - the server loop's handlers of statistics and operator
 * requests: STATS, TENSORS, LIST, ALIAS, FIND, DEVICES, PREWARM, EVICT,
 * REFRESH, POLICY, MODE, RETIRE. Each reads its whole body, checks it, asks
 * the engine or the catalog and answers.
 *
 * Called by conn_readable (server.c) on the server thread only.
 */
#include "core/server_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/devtier.h"
#include "core/topology.h"
#include "cuda/backend.h"

struct stats_ctx {
    ec_wbuf *w;
    uint32_t n;
};

static int put_stat(const char *name, uint64_t v, void *arg)
{
    struct stats_ctx *x = arg;

    ec_put_str(x->w, name);
    ec_put_u64(x->w, v);
    x->n++;
    return 0;
}

/* ec_dyn_totals' callback returns nothing: carry the caller's through. */
struct each_ctx {
    int (*cb)(const char *name, uint64_t v, void *arg);
    void *arg;
    int rc;
};

static void dyn_stat(const char *name, uint64_t v, void *arg)
{
    struct each_ctx *x = arg;

    if (!x->rc)
        x->rc = x->cb(name, v, x->arg);
}

int srv_stats_each(server *s, int (*cb)(const char *name, uint64_t v, void *arg), void *arg)
{
    struct each_ctx dx = {.cb = cb, .arg = arg};
    int rc;
    uint64_t g = s->st.gathers, rows = s->st.rows, hits = s->st.hits, misses = s->st.misses,
             retries = s->st.retries, faults = s->st.faults,
             device_rows = s->st.device_rows, mapped_rows = s->st.mapped_rows,
             staged_rows = s->st.staged_rows, gpu_resolved_rows = s->st.gpu_resolved_rows;
    /* How clients' GPU gathers read host rows, per client GPU ordinal. */
    uint64_t reads_mapped[EC_SHM_MAX_DEVICES] = {0}, reads_staged[EC_SHM_MAX_DEVICES] = {0},
             reads_failed = 0;
    /* ... and who clears their gathers' epoch slots. */
    uint64_t rel_stream[EC_SHM_MAX_DEVICES] = {0}, rel_host[EC_SHM_MAX_DEVICES] = {0};

    for (size_t i = 0; i < s->conns.cap; i++) {
        struct conn *k = s->conns.vals[i];
        if (!s->conns.keys[i] || !k->session)
            continue;
        g += atomic_load_explicit(&k->session->gathers, memory_order_relaxed);
        rows += atomic_load_explicit(&k->session->rows, memory_order_relaxed);
        hits += atomic_load_explicit(&k->session->hits, memory_order_relaxed);
        misses += atomic_load_explicit(&k->session->misses, memory_order_relaxed);
        retries += atomic_load_explicit(&k->session->retries, memory_order_relaxed);
        faults += atomic_load_explicit(&k->session->faults, memory_order_relaxed);
        device_rows += atomic_load_explicit(&k->session->device_rows, memory_order_relaxed);
        mapped_rows += atomic_load_explicit(&k->session->mapped_rows, memory_order_relaxed);
        staged_rows += atomic_load_explicit(&k->session->staged_rows, memory_order_relaxed);
        gpu_resolved_rows +=
            atomic_load_explicit(&k->session->gpu_resolved_rows, memory_order_relaxed);
        for (unsigned d = 0; d < EC_SHM_MAX_DEVICES; d++) {
            uint32_t m = atomic_load_explicit(&k->session->host_reads[d], memory_order_relaxed);
            reads_mapped[d] += m == EC_HOST_READS_MAPPED;
            reads_staged[d] += m == EC_HOST_READS_STAGED || m == EC_HOST_READS_STAGED_FAILED;
            reads_failed += m == EC_HOST_READS_STAGED_FAILED;
            m = atomic_load_explicit(&k->session->epoch_release[d], memory_order_relaxed);
            rel_stream[d] += m == EC_EPOCH_RELEASE_STREAM;
            rel_host[d] += m == EC_EPOCH_RELEASE_HOST;
        }
    }
#define S(name, v)                                     \
    do {                                               \
        if ((rc = cb(name, (uint64_t)(v), arg)) != 0)  \
            return rc;                                 \
    } while (0)
    if ((rc = ec_engine_stats(s->engine, cb, arg)) || (rc = ec_resmgr_stats(s->results, cb, arg)))
        return rc;
    ec_dyn_totals(s->dyn, dyn_stat, &dx);
    if (dx.rc)
        return dx.rc;
    S("clients", s->conns.len);
    S("alias_switches", s->st.alias_switches);
    S("alias_switches_cold", s->st.alias_switches_cold);
    {
        uint64_t errors = 0;
        for (int i = 1; i <= -EC_E_LAST; i++)
            errors += s->st.errors[i];
        S("requests_failed", errors);
    }
    S("connections_accepted", s->st.accepted);
    S("connections_rejected", s->st.rejected);
    S("connections_rejected_uid", s->st.rejected_uid);
    S("connections_rejected_uid_limit", s->st.rejected_uid_limit);
    S("epoch_hold_disconnects", s->st.epoch_disconnects);
    S("pin_lease_revocations", s->st.pin_revocations);
    S("epoch_ghosts", s->nghosts);
    S("epoch_ghost_holds", s->ghost_holds);
    S("requests_denied", s->st.denied);
    S("protocol_errors", s->st.protocol_errors);
    S("clients_disconnected_slow", s->st.disconnected_slow);
    S("imports", s->st.imports);
    S("import_failures", s->st.import_failures);
    S("published_versions", s->st.published_versions);
    S("published_bytes", s->st.published_bytes);
    S("pulled_versions", s->st.pulled_versions);
    S("pulled_bytes", s->st.pulled_bytes);
    S("pull_failures", s->st.pull_failures);
    S("unpublished_versions", s->st.unpublished_versions);
    S("config_reloads", s->conf.reloads);
    S("config_reload_failures", s->conf.failures);
    S("config_last_reload_ok", s->conf.last_ok);
    /* Reported by clients about themselves (untrusted, for monitoring). */
    S("client_gathers", g);
    S("client_rows", rows);
    S("client_hit_rows", hits);
    S("client_miss_rows", misses);
    S("client_retries", retries);
    S("client_faults", faults);
    S("client_rows_device_tier", device_rows);
    S("client_rows_mapped_host", mapped_rows);
    S("client_rows_staged_host", staged_rows);
    S("client_rows_gpu_resolved", gpu_resolved_rows);
    /* Clients per GPU (their ordinal) whose kernels read host rows through
     * the mapped segment, or staged through a pinned buffer (read-only
     * registration unsupported or failed); only GPUs in use. */
    for (unsigned d = 0; d < EC_SHM_MAX_DEVICES; d++) {
        char name[48];
        if (!reads_mapped[d] && !reads_staged[d])
            continue;
        snprintf(name, sizeof(name), "client_gpu%u_host_reads_mapped", d);
        S(name, reads_mapped[d]);
        snprintf(name, sizeof(name), "client_gpu%u_host_reads_staged", d);
        S(name, reads_staged[d]);
        /* Epoch slots cleared by the GPU (stream memory writes) or by a
         * host function per gather. */
        snprintf(name, sizeof(name), "client_gpu%u_epoch_release_stream", d);
        S(name, rel_stream[d]);
        snprintf(name, sizeof(name), "client_gpu%u_epoch_release_host", d);
        S(name, rel_host[d]);
    }
    S("client_host_register_failures", reads_failed);
#undef S
    return 0;
}

int srv_h_stats(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    struct stats_ctx x;
    ec_wbuf w;
    size_t count_at;

    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_STATS);
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_STATS | EC_OP_REPLY, req_id, 0);
    count_at = w.len;
    ec_put_u32(&w, 0);
    x.w = &w;
    x.n = 0;
    srv_stats_each(s, put_stat, &x);
    memcpy(w.buf + count_at, &x.n, 4);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* LIST: records from a (version, tensor) cursor until the message is full. */
struct list_ctx {
    server *s;
    ec_wbuf *w;
    uint32_t vcur, tcur;       /* resume point */
    uint32_t vi, ti;           /* position while walking */
    uint32_t n;
    bool full;
    int rc;
    const ec_cat_version *v;
    uint64_t bytes;
    uint32_t ntensors;
};

static int sum_tensor(const ec_cat_tensor *t, void *arg)
{
    struct list_ctx *x = arg;
    x->bytes += t->rows * t->row_bytes;
    x->ntensors++;
    return 0;
}

static int list_tensor(const ec_cat_tensor *t, void *arg)
{
    struct list_ctx *x = arg;
    size_t need = 2 + strlen(t->name) + 4 + 4 + 8 * t->ndim + 16 + 1;

    if (x->vi == x->vcur && x->ti < x->tcur) {
        x->ti++;
        return 0;
    }
    if (ec_wbuf_room(x->w) < need + 16) {
        x->full = true;
        return 1;
    }
    ec_put_u8(x->w, EC_LIST_TENSOR);
    ec_put_str(x->w, t->name);
    ec_put_u32(x->w, (uint32_t)t->dtype);
    ec_put_u32(x->w, t->ndim);
    for (uint32_t i = 0; i < t->ndim; i++)
        ec_put_u64(x->w, t->shape[i]);
    ec_put_u64(x->w, t->partitions);
    ec_put_u64(x->w, t->rows * t->row_bytes);
    x->n++;
    x->ti++;
    return 0;
}

static int list_version(const ec_cat_version *v, void *arg)
{
    struct list_ctx *x = arg;
    size_t need;

    if (x->vi < x->vcur) {
        x->vi++;
        return 0;
    }
    x->ti = 0;
    if (!(x->vi == x->vcur && x->tcur > 0)) {
        x->bytes = 0;
        x->ntensors = 0;
        ec_catalog_list_tensors(ec_engine_catalog(x->s->engine), v->id, sum_tensor, x);
        need = 2 * 4 + strlen(v->model) + strlen(v->params_json) + strlen(v->aliases) + 48;
        if (ec_wbuf_room(x->w) < need + 16) {
            x->full = true;
            return 1;
        }
        ec_put_u8(x->w, EC_LIST_VERSION);
        ec_put_str(x->w, v->model);
        ec_put_i64(x->w, v->version);
        ec_put_i64(x->w, v->round);
        ec_put_str(x->w, v->params_json);
        ec_put_str(x->w, v->aliases);
        ec_put_i64(x->w, v->created_unix);
        ec_put_u32(x->w, x->ntensors);
        ec_put_u64(x->w, x->bytes);
        x->n++;
    }
    ec_catalog_list_tensors(ec_engine_catalog(x->s->engine), v->id, list_tensor, x);
    if (x->full)
        return 1;
    x->vi++;
    return 0;
}

int srv_h_list(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1];
    struct list_ctx x = {.s = s};
    ec_wbuf w;
    size_t hdr_at;
    int rc;

    ec_get_str(r, model, sizeof(model));
    x.vcur = ec_get_u32(r);
    x.tcur = ec_get_u32(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_LIST);
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_LIST | EC_OP_REPLY, req_id, 0);
    hdr_at = w.len;
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 0);
    x.w = &w;
    rc = ec_catalog_list_versions(ec_engine_catalog(s->engine), model[0] ? model : NULL,
                                  list_version, &x);
    if (rc < 0)
        return rc;
    if (model[0] && x.vi == 0 && !x.full) {
        int64_t v;
        /* An empty listing of a named model: say whether the model exists. */
        rc = ec_catalog_version_of(ec_engine_catalog(s->engine), model, "current", &v);
        if (rc == EC_ENOENT && strstr(ec_last_error(), "unknown model"))
            return rc;
    }
    {
        uint32_t vnext = x.full ? x.vi : 0, tnext = x.full ? x.ti : 0;
        if (x.full && x.n == 0)
            return ec_seterr(EC_ETOOBIG, "a catalog record does not fit in one message");
        memcpy(w.buf + hdr_at, &vnext, 4);
        memcpy(w.buf + hdr_at + 4, &tnext, 4);
        memcpy(w.buf + hdr_at + 8, &x.n, 4);
    }
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

struct version_bytes {
    const char *model;
    int64_t version, id;
    uint64_t total;
};

static int find_version(const ec_cat_version *v, void *arg)
{
    struct version_bytes *x = arg;

    if (v->version != x->version)
        return 0;
    x->id = v->id;
    return 1;
}

static int add_tensor_bytes(const ec_cat_tensor *t, void *arg)
{
    struct version_bytes *x = arg;

    x->total += t->rows * t->row_bytes;
    return 0;
}

/* An alias moved to (model, version): count it, and count and warn when
 * under 90% of the version's bytes are resident (it was not prewarmed:
 * its first requests will fault; the alert rule
 * EmbcacheAliasSwitchedCold watches alias_switches_cold). */
static void note_switch(server *s, const char *model, const char *alias, int64_t version)
{
    struct version_bytes x = {.model = model, .version = version};
    ec_catalog *cat = ec_engine_catalog(s->engine);
    ec_proto_tensor_stat *v = NULL;
    uint64_t resident = 0;
    size_t n = 0;

    s->st.alias_switches++;
    if (ec_catalog_list_versions(cat, model, find_version, &x) != 1 ||
        ec_catalog_list_tensors(cat, x.id, add_tensor_bytes, &x) < 0 || x.total == 0)
        return;
    if (srv_tensor_list(s, &v, &n) == 0)
        for (size_t i = 0; i < n; i++)
            if (v[i].version == version && !strcmp(v[i].model, model))
                resident += v[i].resident_bytes;
    free(v);
    if (resident * 10 < x.total * 9) {
        s->st.alias_switches_cold++;
        ec_warn("alias %s/%s moved to version %lld with %llu of its %llu bytes resident: it "
                "was not prewarmed, and its first requests wait for the disk (run `embcache "
                "prewarm %s %lld` before moving an alias)",
                model, alias, (long long)version, (unsigned long long)resident,
                (unsigned long long)x.total, model, (long long)version);
    }
}

int srv_h_alias(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1], alias[EC_NAME_MAX + 1];
    int64_t version;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, alias, sizeof(alias));
    version = ec_get_i64(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_ALIAS);
    rc = ec_catalog_set_alias(ec_engine_catalog(s->engine), model, alias, version);
    if (rc)
        return rc;
    ec_info("alias %s/%s -> version %lld (by pid %d)", model, alias, (long long)version,
            (int)c->pid);
    note_switch(s, model, alias, version);
    /* Namespaces bound to the alias start their new generation before the
     * mover hears that it moved. */
    ec_resmgr_rebind(s->results);
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_ALIAS | EC_OP_REPLY, req_id, 0);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

int srv_h_find(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1];
    static char params[EC_PARAMS_MAX + 1];
    int64_t round, version;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    round = ec_get_i64(r);
    ec_get_str(r, params, sizeof(params));
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_FIND);
    rc = ec_catalog_find(ec_engine_catalog(s->engine), model, round,
                         params[0] ? params : NULL, &version);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_FIND | EC_OP_REPLY, req_id, 0);
    ec_put_i64(&w, version);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* DEVICES: the machine's topology line and each GPU's device tier, with
 * what a client needs to open its slab (the IPC handle; the emulator's
 * memfd as a descriptor). */
int srv_h_devices(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    ec_devtier *dt = ec_engine_devtier(s->engine);
    unsigned n = ec_devtier_devices(dt);
    int fds[EC_SHM_MAX_DEVICES], nfds = 0;
    char line[EC_TOPOLOGY_DESC_MAX] = "";
    ec_wbuf w;

    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_DEVICES);
    if (ec_engine_topology(s->engine))
        ec_topology_describe(ec_engine_topology(s->engine), NULL, line, sizeof(line));
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_DEVICES | EC_OP_REPLY, req_id, 0);
    ec_put_str(&w, line);
    ec_put_str(&w, ec_backend_get(EC_BACKEND_AUTO)->name);
    ec_put_u32(&w, n);
    for (unsigned i = 0; i < n; i++) {
        ec_devtier_info di;
        ec_devtier_info_get(dt, i, &di);
        ec_put_u32(&w, (uint32_t)di.device);
        ec_put_u32(&w, di.on);
        ec_put_u64(&w, di.slab_gen);
        ec_put_u64(&w, di.slab_bytes);
        ec_put_u64(&w, di.used_bytes);
        ec_put_u64(&w, di.partitions);
        ec_put_u32(&w, (uint32_t)di.numa_node);
        ec_put_str(&w, di.busid);
        for (unsigned k = 0; k < EC_SLAB_HANDLE_BYTES; k += 8) {
            uint64_t v;
            memcpy(&v, di.handle + k, 8);
            ec_put_u64(&w, v);
        }
        ec_put_u32(&w, di.on && di.fd >= 0);
        if (di.on && di.fd >= 0)
            fds[nfds++] = di.fd;
    }
    srv_reply_send(s, c, ec_msg_end(&w), fds, nfds);
    return 0;
}

int srv_h_prewarm(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1], version[EC_NAME_MAX + 1];
    ec_prewarm_progress p;
    uint32_t flags;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, version, sizeof(version));
    flags = ec_get_u32(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_PREWARM);
    if (flags & ~(EC_PREWARM_PIN | EC_PREWARM_DEVICE))
        return ec_seterr(EC_EINVAL, "unknown prewarm flags 0x%x", flags);
    rc = ec_engine_prewarm(s->engine, model, version, flags & EC_PREWARM_PIN,
                           flags & EC_PREWARM_DEVICE, &p);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_PREWARM | EC_OP_REPLY, req_id, 0);
    ec_put_i64(&w, p.version);
    ec_put_u64(&w, p.partitions);
    ec_put_u64(&w, p.done);
    ec_put_u64(&w, p.failed);
    ec_put_u64(&w, p.bytes);
    ec_put_u32(&w, (uint32_t)p.finished);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* EVICT and REFRESH: (model, version) in, one u64 out. */
int srv_h_version_u64(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id, uint16_t op)
{
    char model[EC_NAME_MAX + 1], version[EC_NAME_MAX + 1];
    uint64_t v = 0;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, version, sizeof(version));
    if (!ec_rbuf_done(r))
        return srv_bad_body(op);
    rc = op == EC_OP_EVICT ? ec_engine_evict(s->engine, model, version, &v)
                           : ec_engine_refresh(s->engine, model, version, &v);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), (uint16_t)(op | EC_OP_REPLY), req_id, 0);
    ec_put_u64(&w, v);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

int srv_h_policy(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1];
    uint64_t min_resident, milli_rate;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    min_resident = ec_get_u64(r);
    milli_rate = ec_get_u64(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_POLICY);
    rc = ec_engine_set_policy(s->engine, model, min_resident, (double)milli_rate / 1000.0);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_POLICY | EC_OP_REPLY, req_id, 0);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

int srv_h_retire(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1];
    int64_t version;
    uint32_t force;
    int rc;

    ec_get_str(r, model, sizeof(model));
    version = ec_get_i64(r);
    force = ec_get_u32(r);
    if (!ec_rbuf_done(r) || force > 1)
        return srv_bad_body(EC_OP_RETIRE);
    if ((rc = srv_outstanding_take(c)))
        return rc;
    rc = ec_engine_retire(s->engine, c->id, (uint64_t)EC_OP_RETIRE << 32 | req_id, model,
                          version, force);
    if (rc)
        c->outstanding--;
    return rc;
}


/* TENSORS: the tensors the engine has open, from a cursor, as many as fit. */
struct tensors_ctx {
    server *s;
    ec_proto_tensor_stat *v;
    size_t n, cap;
};

/* The rows and hits clients reported for a tensor: those gone and those
 * connected now. */
static void client_counts(server *s, uint32_t tensor, uint64_t *rows, uint64_t *hits)
{
    const struct tcount *tc = ec_u64map_get(&s->tfold, tensor);

    *rows = tc ? tc->rows : 0;
    *hits = tc ? tc->hits : 0;
    for (size_t i = 0; i < s->conns.cap; i++) {
        const struct conn *k = s->conns.vals[i];
        if (!s->conns.keys[i] || !k->session)
            continue;
        for (unsigned j = 0; j < EC_SESSION_TENSORS; j++) {
            const ec_session_tensor *t = &k->session->tstat[j];
            if (atomic_load_explicit(&t->tensor, memory_order_relaxed) != tensor)
                continue;
            *rows += atomic_load_explicit(&t->rows, memory_order_relaxed);
            *hits += atomic_load_explicit(&t->hits, memory_order_relaxed);
        }
    }
}

static int collect_tensor(const ec_engine_tensor_stat *t, void *arg)
{
    struct tensors_ctx *x = arg;
    ec_proto_tensor_stat *p;

    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 64;
        ec_proto_tensor_stat *v = realloc(x->v, cap * sizeof(*v));
        if (!v)
            return ec_seterr(EC_ENOMEM, "tensor statistics");
        x->v = v;
        x->cap = cap;
    }
    p = &x->v[x->n++];
    memset(p, 0, sizeof(*p));
    p->id = t->id;
    p->mode = (uint32_t)t->mode;
    p->policy = (uint32_t)t->policy;
    p->file_version = t->file_version;
    snprintf(p->model, sizeof(p->model), "%s", t->model);
    p->version = t->version;
    snprintf(p->name, sizeof(p->name), "%s", t->name);
    p->bytes = t->bytes;
    p->row_bytes = t->row_bytes;
    p->resident_bytes = t->resident_bytes;
    p->resident_rows = t->resident_rows;
    p->row_faults = t->row_faults;
    p->bytes_read = t->bytes_read;
    client_counts(x->s, t->id, &p->rows_served, &p->hits);
    return 0;
}

static int cmp_stat(const void *a, const void *b)
{
    const ec_proto_tensor_stat *x = a, *y = b;
    return (x->id > y->id) - (x->id < y->id);
}

int srv_tensor_list(server *s, ec_proto_tensor_stat **out, size_t *n)
{
    struct tensors_ctx x = {.s = s};
    int rc = ec_engine_tensor_stats(s->engine, collect_tensor, &x);

    if (rc) {
        free(x.v);
        return rc;
    }
    if (x.n)
        qsort(x.v, x.n, sizeof(*x.v), cmp_stat);
    *out = x.v;
    *n = x.n;
    return 0;
}

int srv_h_tensors(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    struct tensors_ctx x = {.s = s};
    uint32_t cursor = ec_get_u32(r), n = 0;
    size_t at, i;
    ec_wbuf w;
    int rc;

    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_TENSORS);
    rc = srv_tensor_list(s, &x.v, &x.n);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_TENSORS | EC_OP_REPLY, req_id, 0);
    at = w.len;
    ec_put_u32(&w, 0);
    ec_put_u32(&w, 0);
    for (i = cursor < x.n ? cursor : x.n; i < x.n; i++) {
        /* a record is at most two names and 92 bytes */
        if (ec_wbuf_room(&w) < 2 * (EC_NAME_MAX + 2) + 128)
            break;
        ec_put_tensor_stat(&w, &x.v[i]);
        n++;
    }
    {
        uint32_t next = i < x.n ? (uint32_t)i : 0;
        memcpy(w.buf + at, &next, 4);
        memcpy(w.buf + at + 4, &n, 4);
    }
    free(x.v);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* MODE: how a model's tensor (or all of them) is cached. */
int srv_h_mode(server *s, struct conn *c, ec_rbuf *r, uint32_t req_id)
{
    char model[EC_NAME_MAX + 1], tensor[EC_NAME_MAX + 1];
    uint32_t mode;
    ec_wbuf w;
    int rc;

    ec_get_str(r, model, sizeof(model));
    ec_get_str(r, tensor, sizeof(tensor));
    mode = ec_get_u32(r);
    if (!ec_rbuf_done(r))
        return srv_bad_body(EC_OP_MODE);
    if (mode > EC_CACHE_ROWS)
        return ec_seterr(EC_EINVAL, "cache mode %u is not auto (0), partitions (1) or rows (2)",
                         mode);
    rc = ec_engine_set_tensor_mode(s->engine, model, tensor, (ec_cache_mode)mode);
    if (rc)
        return rc;
    ec_msg_begin(&w, s->out, sizeof(s->out), EC_OP_MODE | EC_OP_REPLY, req_id, 0);
    srv_reply_send(s, c, ec_msg_end(&w), NULL, 0);
    return 0;
}

/* /metrics (core/metrics.c): what STATS, TENSORS and NS_LIST (as an
 * administrator) would answer, rendered on this thread. */
void srv_metrics_render(void *arg, ec_metrics_sink *k)
{
    server *s = arg;
    ec_res_peer all = {.owner = 0, .uid = 0, .admin = true};
    ec_proto_tensor_stat *v = NULL;
    uint32_t cursor = 0;
    ec_proto_ns rec;
    size_t n = 0;

    srv_stats_each(s, ec_metrics_put_stat, k);
    {
        ec_hist fault, read, recompute, remote_result;
        ec_engine_hists(s->engine, &fault, &read);
        ec_resmgr_recompute_hist(s->results, &recompute);
        ec_resmgr_remote_hist(s->results, &remote_result);
        ec_metrics_put_hist(k, "fault", "Fault requests, from their arrival to their answer",
                            &fault);
        ec_metrics_put_hist(k, "pager_read", "Pager reads, from submission to completion",
                            &read);
        {
            ec_hist remote;
            ec_engine_remote_hist(s->engine, &remote);
            ec_metrics_put_hist(k, "remote_read", "Reads from the remote tier's cluster, from "
                                "submission to completion (fetched, verified, kept)", &remote);
        }
        ec_metrics_put_hist(k, "recompute", "Result recomputations: a lease's grant to its "
                            "holder's put", &recompute);
        ec_metrics_put_hist(k, "remote_result", "Cluster requests of remote result "
                            "namespaces (lease, value, poll, release), from submission to "
                            "completion", &remote_result);
        ec_metrics_put_errors(k, s->st.errors);
    }
    if (srv_tensor_list(s, &v, &n) == 0)
        for (size_t i = 0; i < n; i++)
            ec_metrics_put_tensor(k, &v[i]);
    free(v);
    while (ec_resmgr_list(s->results, &all, &cursor, &rec)) {
        srv_results_live_counts(s, cursor - 1, &rec);
        ec_metrics_put_ns(k, &rec);
    }
}
