/*
 * engine_life.c - the model-version lifecycle: prewarm (read a version,
 * optionally pinned or promoted to the GPUs, ahead of traffic), evict,
 * retire (once its reads in flight drain, drop its partitions, catalog
 * entry and files) and refresh (reload partitions whose file changed).
 *
 * Called by the server loop (operator commands) and by engine_fault.c: a
 * prewarm's requests report here as they finish, and ec_engine_complete
 * checks the retires waiting for reads. Runs on the server thread only.
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/log.h"
#include "shm/index.h"

/* ------------------------------------------------------------------ */
/* Model-version lifecycle: prewarm, evict, retire, refresh             */

/* A version's catalog id, number, aliases and tensor ids. */
struct vinfo {
    int64_t id;
    int64_t version;
    char aliases[1024];
    uint32_t *tensors;
    uint32_t ntensors;
    uint64_t bytes;          /* page-rounded bytes of all its tensors */
};

static int vinfo_version_cb(const ec_cat_version *v, void *arg)
{
    struct vinfo *vi = arg;

    if (v->version != vi->version)
        return 0;
    vi->id = v->id;
    snprintf(vi->aliases, sizeof(vi->aliases), "%s", v->aliases);
    return 1;
}

static int vinfo_tensor_cb(const ec_cat_tensor *t, void *arg)
{
    struct vinfo *vi = arg;
    uint32_t *ids = realloc(vi->tensors, (vi->ntensors + 1) * sizeof(*ids));

    if (!ids)
        return EC_ENOMEM;
    vi->tensors = ids;
    vi->tensors[vi->ntensors++] = (uint32_t)t->id;
    vi->bytes += page_round(t->rows * t->row_bytes);
    return 0;
}

static int vinfo_get(ec_engine *e, const char *model, const char *voa, struct vinfo *vi)
{
    int rc;

    memset(vi, 0, sizeof(*vi));
    rc = ec_catalog_version_of(e->cat, model, voa, &vi->version);
    if (rc)
        return rc;
    rc = ec_catalog_list_versions(e->cat, model, vinfo_version_cb, vi);
    if (rc < 0)
        return rc;
    if (!vi->id)
        return ec_seterr(EC_ENOENT, "model '%s' has no version %lld", model,
                         (long long)vi->version);
    rc = ec_catalog_list_tensors(e->cat, vi->id, vinfo_tensor_cb, vi);
    if (rc < 0) {
        free(vi->tensors);
        vi->tensors = NULL;
        return rc == EC_ENOMEM ? ec_seterr(rc, "tensor list") : rc;
    }
    return 0;
}

static void prewarm_pump(ec_engine *e, struct prewarm *pw);

/* A prewarm request finished: count it, and keep the prewarm going. */
void eng_prewarm_report(ec_engine *e, struct request *r)
{
    struct prewarm *pw = r->pw;

    if (r->res.status) {
        pw->failed += r->parts;
        e->st.prewarm_failed += r->parts;
        if (!pw->msg[0])
            snprintf(pw->msg, sizeof(pw->msg), "%s", r->res.msg);
    } else {
        pw->done += r->parts;
        e->st.prewarm_done += r->parts;
    }
    pw->outstanding--;
    prewarm_pump(e, pw);
}

#define PREWARM_WINDOW 32 /* prewarm reads outstanding at once */
#define PREWARM_ROWS 256  /* rows of a tensor cached by rows per prewarm request */

void eng_prewarm_free(struct prewarm *pw)
{
    for (uint32_t i = 0; pw->hot && i < pw->ntensors; i++)
        free(pw->hot[i]);
    free(pw->hot);
    free(pw->nhot);
    free(pw->tensors);
    free(pw);
}

static struct request *prewarm_req(struct prewarm *pw, enum req_kind kind, uint32_t tensor,
                                   uint64_t parts)
{
    struct request *r = calloc(1, sizeof(*r));

    if (!r)
        return NULL;
    r->kind = kind;
    r->owner = EC_ENGINE_OWNER_SELF;
    r->tensor = tensor;
    r->pw = pw;
    r->parts = parts;
    pw->outstanding++;
    return r;
}

/* Issue reads until PREWARM_WINDOW are outstanding or all are issued. A
 * pinned prewarm pins whole tensors instead (one request each). */
/* Hand a version's tensors to the device tier to promote (all partitions). */
static void prewarm_device(ec_engine *e, const uint32_t *tensors, uint32_t n)
{
    uint64_t *parts = calloc(n ? n : 1, sizeof(*parts));

    if (!parts)
        return;
    for (uint32_t i = 0; i < n; i++) {
        struct tstate *ts;
        if (eng_tensor_get(e, tensors[i], &ts) == 0)
            parts[i] = ts->cat.partitions;
    }
    ec_devtier_want(e->dt, tensors, n, parts);
    free(parts);
}

static void prewarm_pump(ec_engine *e, struct prewarm *pw)
{
    while (pw->ti < pw->ntensors && pw->outstanding < PREWARM_WINDOW) {
        struct tstate *ts;
        struct request *r;
        int rc = eng_tensor_get(e, pw->tensors[pw->ti], &ts);

        if (rc) {
            /* The whole tensor fails; its partition count is unknown here. */
            pw->failed++;
            if (!pw->msg[0])
                snprintf(pw->msg, sizeof(pw->msg), "%s", ec_last_error());
            pw->ti++;
            pw->pi = 0;
            continue;
        }
        if (pw->pin) {
            r = prewarm_req(pw, REQ_PREWARM_PIN, (uint32_t)ts->cat.id, ts->cat.partitions);
            pw->ti++;
            if (!r)
                break;
            eng_pin_start(e, r);
            continue;
        }
        if (ts->mode == EC_CACHE_ROWS) {
            /* By rows: its hottest rows from the access history. */
            uint64_t k = pw->nhot[pw->ti] - pw->pi;
            if (k == 0) {
                pw->ti++;
                pw->pi = 0;
                continue;
            }
            if (k > PREWARM_ROWS)
                k = PREWARM_ROWS;
            r = prewarm_req(pw, REQ_PREWARM, (uint32_t)ts->cat.id, k);
            if (!r)
                break;
            r->pending = 1;
            rc = eng_rows_want(e, ts, pw->hot[pw->ti] + pw->pi, (size_t)k, r);
            if (rc)
                eng_result_error(&r->res, rc, ec_last_error());
            pw->pi += (uint32_t)k;
            eng_request_put(e, r);
            continue;
        }
        if (pw->pi >= ts->cat.partitions) {
            pw->ti++;
            pw->pi = 0;
            continue;
        }
        r = prewarm_req(pw, REQ_PREWARM, (uint32_t)ts->cat.id, 1);
        if (!r)
            break;
        r->pending = 1;
        rc = eng_want_partition(e, ts, pw->pi, r);
        if (rc == EC_ENOSPC && eng_room_coming(e))
            rc = eng_defer_partition(e, r, (uint32_t)ts->cat.id, pw->pi);
        if (rc)
            eng_result_error(&r->res, rc, ec_last_error());
        pw->pi++;
        eng_request_put(e, r); /* may report (and pump) right away */
    }
    if (pw->ti >= pw->ntensors && pw->outstanding == 0 && !pw->finished) {
        pw->finished = true;
        if (pw->device)
            prewarm_device(e, pw->tensors, pw->ntensors);
        if (pw->failed)
            ec_warn("prewarm of %s version %lld: %llu of %llu partitions failed: %s",
                    pw->model, (long long)pw->version, (unsigned long long)pw->failed,
                    (unsigned long long)pw->total, pw->msg);
        else
            ec_info("prewarm of %s version %lld finished: %llu partitions", pw->model,
                    (long long)pw->version, (unsigned long long)pw->total);
    }
}

static uint64_t pinned_bytes(const ec_engine *e)
{
    uint64_t b = 0;

    for (size_t i = 0; i < e->nclock; i++)
        if (e->clock[i]->pins || e->clock[i]->loading)
            b += e->clock[i]->bytes;
    return b;
}

static void progress_of(const struct prewarm *pw, bool finished, ec_prewarm_progress *out)
{
    memset(out, 0, sizeof(*out));
    out->version = pw->version;
    out->partitions = pw->total;
    out->done = pw->done;
    out->failed = pw->failed;
    out->bytes = pw->bytes;
    out->finished = finished;
}

int ec_engine_prewarm(ec_engine *e, const char *model, const char *version, bool pin,
                      bool device, ec_prewarm_progress *out)
{
    struct prewarm **pp, *pw;
    struct vinfo vi;
    int rc = vinfo_get(e, model, version, &vi);

    if (rc)
        return rc;
    for (pp = &e->prewarms; *pp; pp = &(*pp)->next)
        if ((*pp)->version_id == vi.id)
            break;
    if ((pw = *pp)) {
        /* Running: report. Finished: report once, then forget it. */
        free(vi.tensors);
        progress_of(pw, pw->finished, out);
        if (pw->finished) {
            *pp = pw->next;
            eng_prewarm_free(pw);
        }
        return 0;
    }
    if (pin && vi.bytes + pinned_bytes(e) > e->budget) {
        free(vi.tensors);
        return ec_seterr(EC_ENOSPC, "budget exhausted: pinning model '%s' version %lld needs "
                                    "%llu bytes; %llu of the %llu-byte budget are pinned "
                                    "already; evict a pinned version or raise --budget",
                         model, (long long)vi.version, (unsigned long long)vi.bytes,
                         (unsigned long long)pinned_bytes(e), (unsigned long long)e->budget);
    }
    pw = calloc(1, sizeof(*pw));
    if (!pw) {
        free(vi.tensors);
        return ec_seterr(EC_ENOMEM, "prewarm");
    }
    pw->version_id = vi.id;
    snprintf(pw->model, sizeof(pw->model), "%s", model);
    pw->version = vi.version;
    pw->tensors = vi.tensors;
    pw->ntensors = vi.ntensors;
    pw->pin = pin;
    pw->device = device;
    pw->bytes = vi.bytes;
    pw->hot = calloc(vi.ntensors ? vi.ntensors : 1, sizeof(*pw->hot));
    pw->nhot = calloc(vi.ntensors ? vi.ntensors : 1, sizeof(*pw->nhot));
    if (!pw->hot || !pw->nhot) {
        eng_prewarm_free(pw);
        return ec_seterr(EC_ENOMEM, "prewarm");
    }
    for (uint32_t i = 0; i < vi.ntensors; i++) {
        struct tstate *ts;
        if (eng_tensor_get(e, vi.tensors[i], &ts) != 0) {
            pw->total++;
        } else if (ts->mode == EC_CACHE_ROWS && !pin) {
            /* A tensor cached by rows is not read whole: its hottest rows
             * are, from the access history (none yet: nothing). */
            if (eng_rows_hot_load(e, ts, eng_rows_capacity(e, ts), &pw->hot[i], &pw->nhot[i]))
                ec_warn("prewarm of %s version %lld: %s", model, (long long)vi.version,
                        ec_last_error());
            pw->total += pw->nhot[i];
        } else {
            pw->total += ts->cat.partitions;
        }
    }
    pw->next = e->prewarms;
    e->prewarms = pw;
    ec_info("prewarm of %s version %lld: %llu partitions, %llu bytes%s", model,
            (long long)vi.version, (unsigned long long)pw->total,
            (unsigned long long)pw->bytes, pin ? ", pinned" : "");
    prewarm_pump(e, pw);
    progress_of(pw, false, out); /* reported finished by the next call */
    return 0;
}

/* Stop issuing reads for a version's prewarm (evict, retire). */
static void prewarm_stop(ec_engine *e, int64_t version_id)
{
    for (struct prewarm *pw = e->prewarms; pw; pw = pw->next)
        if (pw->version_id == version_id)
            pw->ti = pw->ntensors;
}

/* Release the daemon's own pins on a tensor. */
static void unpin_self(ec_engine *e, uint32_t tensor)
{
    struct owner *o = ec_u64map_get(&e->owners, EC_ENGINE_OWNER_SELF);

    for (struct pin **pp = o ? &o->pins : NULL; pp && *pp;) {
        struct pin *p = *pp;
        if (p->tensor != tensor) {
            pp = &p->next;
            continue;
        }
        *pp = p->next;
        p->unit->pins--;
        e->st.unpins++;
        free(p);
    }
}

/* Drop what is resident of a tensor and not held by a client's view.
 * Returns the bytes freed; counts units kept because of views in *held. */
static uint64_t drop_tensor_units(ec_engine *e, struct tstate *ts, uint64_t *held)
{
    uint64_t freed = 0;

    unpin_self(e, (uint32_t)ts->cat.id);
    freed += eng_rows_drop_tensor(e, ts);
    for (uint64_t p = 0; p < ts->cat.partitions; p++) {
        struct unit *u = ec_u64map_get(&e->resident, EC_INDEX_KEY(ts->cat.id, p));
        if (!u)
            continue;
        if (u->pins || u->loading) {
            (*held)++;
            continue;
        }
        freed += u->bytes;
        eng_unit_drop(e, u, false);
    }
    return freed;
}

int ec_engine_evict(ec_engine *e, const char *model, const char *version, uint64_t *bytes)
{
    struct vinfo vi;
    uint64_t freed = 0, held = 0;
    int rc = vinfo_get(e, model, version, &vi);

    if (rc)
        return rc;
    prewarm_stop(e, vi.id);
    for (uint32_t i = 0; i < vi.ntensors; i++) {
        struct tstate *ts = ec_u64map_get(&e->tensors, vi.tensors[i]);
        if (ts)
            freed += drop_tensor_units(e, ts, &held);
    }
    free(vi.tensors);
    eng_gauges(e);
    ec_info("evicted %s version %lld: %llu bytes freed%s", model, (long long)vi.version,
            (unsigned long long)freed, held ? " (some partitions are held by views)" : "");
    *bytes = freed;
    return 0;
}

static int collect_path(const char *path, void *arg)
{
    char ***paths = arg;
    size_t n = 0;

    while (*paths && (*paths)[n])
        n++;
    char **p = realloc(*paths, (n + 2) * sizeof(char *));
    if (!p)
        return EC_ENOMEM;
    p[n] = strdup(path);
    p[n + 1] = NULL;
    *paths = p;
    return p[n] ? 0 : EC_ENOMEM;
}

/* Reads are drained: drop the partitions, the catalog entry and the files. */
static int retire_finish(ec_engine *e, struct retire *rt)
{
    char **paths = NULL;
    uint64_t held = 0;
    int rc;

    for (uint32_t i = 0; i < rt->ntensors; i++) {
        struct tstate *ts = ec_u64map_get(&e->tensors, rt->tensors[i]);
        if (ts)
            drop_tensor_units(e, ts, &held);
    }
    rc = ec_catalog_drop_version(e->cat, rt->model, rt->version, collect_path, &paths);
    if (rc == 0) {
        for (uint32_t i = 0; i < rt->ntensors; i++) {
            struct tstate *ts = ec_u64map_del(&e->tensors, rt->tensors[i]);
            char hot[4200];
            snprintf(hot, sizeof(hot), "%s/hot/%u.hot", e->data_dir, rt->tensors[i]);
            unlink(hot); /* its access history goes with it */
            snprintf(hot, sizeof(hot), "%s/indexes/%u.ivf", e->data_dir, rt->tensors[i]);
            unlink(hot); /* and its approximate index (core/server_index.c) */
            if (ts) {
                eng_files_close(e, ts);
                eng_rows_forget(e, ts);
                eng_tstate_free(ts);
            }
        }
        for (size_t i = 0; paths && paths[i]; i++) {
            char full[4096 + EC_CAT_PATH_MAX + 2];
            snprintf(full, sizeof(full), "%s/%s", e->data_dir, paths[i]);
            if (unlink(full) < 0 && errno != ENOENT)
                ec_warn("retire: cannot remove %s: %s", full, strerror(errno));
        }
        free(ec_u64map_del(&e->versions, (uint64_t)rt->version_id));
        e->st.retired_versions++;
        ec_info("retired %s version %lld", rt->model, (long long)rt->version);
    } else {
        /* The catalog still has it: let it be read again. */
        for (uint32_t i = 0; i < rt->ntensors; i++) {
            struct tstate *ts = ec_u64map_get(&e->tensors, rt->tensors[i]);
            if (ts)
                ts->retired = false;
        }
    }
    for (size_t i = 0; paths && paths[i]; i++)
        free(paths[i]);
    free(paths);
    eng_gauges(e);
    return rc;
}

static bool retire_drained(ec_engine *e, const struct retire *rt)
{
    for (uint32_t i = 0; i < rt->ntensors; i++) {
        struct tstate *ts = ec_u64map_get(&e->tensors, rt->tensors[i]);
        if (ts && (ts->inflight || ts->row_jobs))
            return false;
    }
    return true;
}

void eng_retires_check(ec_engine *e)
{
    for (struct retire **pp = &e->retires; *pp;) {
        struct retire *rt = *pp;
        ec_engine_result res = {0};

        if (!retire_drained(e, rt)) {
            pp = &rt->next;
            continue;
        }
        *pp = rt->next;
        res.status = retire_finish(e, rt);
        if (res.status)
            snprintf(res.msg, sizeof(res.msg), "%s", ec_last_error());
        e->notify(e->notify_arg, rt->owner, rt->token, &res);
        free(rt->tensors);
        free(rt);
    }
}

int ec_engine_retire(ec_engine *e, uint64_t owner, uint64_t token, const char *model,
                     int64_t version, bool force)
{
    char vs[32];
    struct vinfo vi;
    struct retire *rt;
    int rc;

    snprintf(vs, sizeof(vs), "%lld", (long long)version);
    rc = vinfo_get(e, model, vs, &vi);
    if (rc)
        return rc;
    if (vi.aliases[0] && !force) {
        free(vi.tensors);
        return ec_seterr(EC_EPERM, "model '%s' version %lld is what alias(es) '%s' point to: "
                                   "point them at another version first, or retire with "
                                   "--force to remove them too",
                         model, (long long)version, vi.aliases);
    }
    /* A client's view holds raw pointers into the version's extents: it must
     * be released first. */
    for (uint32_t i = 0; i < vi.ntensors; i++) {
        struct tstate *ts = ec_u64map_get(&e->tensors, vi.tensors[i]);
        struct unit *g = ts ? ts->group : NULL;
        uint32_t self = 0;
        struct owner *o = ec_u64map_get(&e->owners, EC_ENGINE_OWNER_SELF);
        for (struct pin *p = o ? o->pins : NULL; p; p = p->next)
            self += p->unit == g;
        if (g && g->pins > self) {
            free(vi.tensors);
            return ec_seterr(EC_EBUSY, "model '%s' version %lld: tensor '%s' has %u open "
                                       "view(s); retire it once they are released",
                             model, (long long)version, ts->cat.name, g->pins - self);
        }
    }
    rt = calloc(1, sizeof(*rt));
    if (!rt) {
        free(vi.tensors);
        return ec_seterr(EC_ENOMEM, "retire");
    }
    rt->owner = owner;
    rt->token = token;
    rt->version_id = vi.id;
    snprintf(rt->model, sizeof(rt->model), "%s", model);
    rt->version = version;
    rt->tensors = vi.tensors;
    rt->ntensors = vi.ntensors;
    prewarm_stop(e, vi.id);
    for (uint32_t i = 0; i < vi.ntensors; i++) {
        struct tstate *ts = ec_u64map_get(&e->tensors, vi.tensors[i]);
        if (ts)
            ts->retired = true;
    }
    rt->next = e->retires;
    e->retires = rt;
    eng_retires_check(e); /* finishes now when nothing is in flight */
    return 0;
}

int ec_engine_refresh(ec_engine *e, const char *model, const char *version, uint64_t *changed)
{
    struct vinfo vi;
    uint64_t total = 0;
    int rc = vinfo_get(e, model, version, &vi);

    if (rc)
        return rc;
    for (uint32_t i = 0; i < vi.ntensors && rc == 0; i++) {
        struct tstate *ts;
        ec_partfile_meta m;
        uint64_t *sums = NULL, n = 0, held = 0;
        int fd = -1;

        rc = eng_tensor_get(e, vi.tensors[i], &ts);
        if (rc == EC_ECORRUPT && (ts = ec_u64map_get(&e->tensors, vi.tensors[i]))) {
            rc = 0; /* known, its file closed for room and changed since: below */
        } else if (rc == EC_ECORRUPT) {
            /* The file no longer matches the catalog: that is what refresh is
             * for. Open it without the catalog check below. */
            ec_cat_tensor t = {0};
            rc = ec_catalog_get_tensor(e->cat, vi.tensors[i], &t);
            if (rc)
                break;
            ts = calloc(1, sizeof(*ts));
            if (!ts) {
                ec_cat_tensor_clear(&t);
                rc = ec_seterr(EC_ENOMEM, "tensor state");
                break;
            }
            ts->cat = t;
            ts->fd = ts->dfd = ts->file_slot = -1;
            ts->vs = eng_vstate_get(e, t.version_id, t.model, t.version);
            snprintf(ts->path, sizeof(ts->path), "%s/%s", e->data_dir, t.path);
            if (ec_u64map_put(&e->tensors, vi.tensors[i], ts)) {
                eng_tstate_free(ts);
                rc = ec_seterr(EC_ENOMEM, "tensor table");
                break;
            }
        } else if (rc) {
            break;
        }
        rc = ec_partfile_open(ts->path, &m, &fd);
        if (rc)
            break;
        if (m.dtype != ts->cat.dtype || m.ndim != ts->cat.ndim ||
            memcmp(m.shape, ts->cat.shape, sizeof(m.shape)) ||
            m.rows_per_partition != ts->cat.rows_per_partition) {
            close(fd);
            rc = ec_seterr(EC_EFORMAT, "partition file %s of tensor '%s' has a new layout "
                                       "(dtype, shape or partitioning): import it as a new "
                                       "version", ts->path, ts->cat.name);
            break;
        }
        if (m.header_checksum == ts->cat.header_checksum && ts->fd >= 0) {
            close(fd);
            continue; /* same header, same table: nothing changed */
        }
        sums = calloc(m.partitions ? m.partitions : 1, sizeof(*sums));
        rc = sums ? ec_partfile_read_table(fd, &m, sums) : ec_seterr(EC_ENOMEM, "checksums");
        if (rc == 0 && ts->row_jobs)
            rc = ec_seterr(EC_EBUSY, "rows of tensor '%s' are being read; retry in a moment",
                           ts->cat.name);
        /* Remote reads hold the tensor's remote source (its checksums). */
        if (rc == 0 && ts->rsrc && ts->inflight)
            rc = ec_seterr(EC_EBUSY, "tensor '%s' is being read from the remote tier; retry "
                           "in a moment", ts->cat.name);
        /* Changed partitions must not be pinned or being read. */
        for (uint64_t p = 0; rc == 0 && p < m.partitions; p++) {
            struct unit *u;
            if (sums[p] == ts->cat.part_checksums[p])
                continue;
            n++;
            u = ec_u64map_get(&e->resident, EC_INDEX_KEY(ts->cat.id, p));
            if (ec_u64map_get(&e->inflight, EC_INDEX_KEY(ts->cat.id, p)) ||
                (u && (u->pins || u->loading)))
                rc = ec_seterr(EC_EBUSY, "partition %llu of tensor '%s' changed but is being "
                                         "read or held by a view; retry once it is released",
                               (unsigned long long)p, ts->cat.name);
        }
        if (rc == 0)
            rc = ec_catalog_update_file(e->cat, ts->cat.id, m.file_size, m.header_checksum,
                                        sums, m.partitions);
        if (rc) {
            free(sums);
            close(fd);
            break;
        }
        /* Committed: drop the changed partitions (they reload from the new
         * file), and switch the tensor to the new file and checksums. */
        for (uint64_t p = 0; p < m.partitions; p++) {
            struct unit *u;
            if (sums[p] == ts->cat.part_checksums[p])
                continue;
            u = ec_u64map_get(&e->resident, EC_INDEX_KEY(ts->cat.id, p));
            if (u)
                eng_unit_drop(e, u, false);
        }
        (void)held;
        free(ts->cat.part_checksums);
        ts->cat.part_checksums = sums;
        ts->cat.header_checksum = m.header_checksum;
        ts->cat.file_size = m.file_size;
        ts->meta = m;
        eng_files_adopt(e, ts, fd);
        eng_remote_reset(e, ts); /* the new checksums, and what is local now */
        eng_rows_reload(e, ts); /* its block checksums, and the rows it cached */
        total += n;
        e->st.refreshed_partitions += n;
    }
    free(vi.tensors);
    eng_gauges(e);
    if (rc == 0) {
        ec_info("refreshed %s version %s: %llu partition(s) changed", model, version,
                (unsigned long long)total);
        *changed = total;
    }
    return rc;
}
