/*
 * engine.c - the engine itself (see engine.h): open and close, accessors,
 * stats, the periodic tick, connection owners, and the small helpers and
 * tensor table (eng_tensor_get, ec_engine_resolve) every engine file uses.
 *
 * Called by the server loop (core/server.c) and, through engine_impl.h, by
 * the other engine files. Runs on the server thread only. The state and
 * its invariants are described in engine_impl.h.
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "core/import.h"

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

/* A client used a version: count it toward its request rate. */
void eng_note_request(struct vstate *vs)
{
    if (vs) {
        vs->requests++;
        vs->last_access = mono_now();
    }
}

struct vstate *eng_vstate_of_tensor(const ec_engine *e, uint32_t tensor)
{
    struct tstate *ts = ec_u64map_get(&e->tensors, tensor);
    return ts ? ts->vs : NULL;
}

void eng_gauges(ec_engine *e)
{
    ec_extent_stats s;

    ec_extent_stats_get(e->ext, &s);
    atomic_store_explicit(&e->seg.hdr->used_bytes, eng_used_bytes(e), memory_order_relaxed);
    atomic_store_explicit(&e->seg.hdr->resident_partitions, e->resident.len,
                          memory_order_relaxed);
}

void eng_result_error(ec_engine_result *r, int code, const char *msg)
{
    if (r->status == 0) {
        r->status = code;
        snprintf(r->msg, sizeof(r->msg), "%s", msg);
    }
}

/* ------------------------------------------------------------------ */
/* Tensors                                                             */

void eng_tstate_free(struct tstate *ts)
{
    if (!ts)
        return;
    if (ts->fd >= 0)
        close(ts->fd);
    if (ts->dfd >= 0)
        close(ts->dfd);
    free(ts->block_sums);
    eng_remote_free(ts);
    ec_cat_tensor_clear(&ts->cat);
    free(ts);
}

/* The version's state, created with its policy from the catalog. NULL only
 * when out of memory (the version then has no policy). */
struct vstate *eng_vstate_get(ec_engine *e, int64_t version_id, const char *model,
                              int64_t version)
{
    struct vstate *vs = ec_u64map_get(&e->versions, (uint64_t)version_id);

    if (vs)
        return vs;
    vs = calloc(1, sizeof(*vs));
    if (!vs)
        return NULL;
    vs->version_id = version_id;
    snprintf(vs->model, sizeof(vs->model), "%s", model);
    vs->version = version;
    vs->last_access = mono_now();
    if (ec_catalog_get_policy(e->cat, version_id, &vs->min_resident, &vs->min_rate))
        ec_warn("no residency policy for %s version %lld: %s", model, (long long)version,
                ec_last_error());
    if (ec_u64map_put(&e->versions, (uint64_t)version_id, vs)) {
        free(vs);
        return NULL;
    }
    return vs;
}

/* Load a tensor's record and open its partition file, checking that the file
 * is the one the catalog registered. */
int eng_tensor_get(ec_engine *e, uint32_t id, struct tstate **out)
{
    struct tstate *ts = ec_u64map_get(&e->tensors, id);
    int rc;

    if (ts) {
        *out = ts;
        return eng_files_open(e, ts); /* it may have been closed for room */
    }
    ts = calloc(1, sizeof(*ts));
    if (!ts)
        return ec_seterr(EC_ENOMEM, "tensor state");
    ts->fd = -1;
    ts->dfd = -1;
    ts->file_slot = -1;
    rc = ec_catalog_get_tensor(e->cat, id, &ts->cat);
    if (rc)
        goto fail;
    snprintf(ts->path, sizeof(ts->path), "%s/%s", e->data_dir, ts->cat.path);
    rc = eng_files_open(e, ts);
    if (rc)
        goto fail;
    ts->vs = eng_vstate_get(e, ts->cat.version_id, ts->cat.model, ts->cat.version);
    rc = eng_rows_decide(e, ts);
    if (rc == 0 && ec_u64map_put(&e->tensors, id, ts))
        rc = ec_seterr(EC_ENOMEM, "tensor table");
    if (rc) {
        eng_rows_forget(e, ts);
        goto fail;
    }
    *out = ts;
    return 0;
fail:
    eng_files_close(e, ts);
    eng_tstate_free(ts);
    return rc;
}

int ec_engine_resolve(ec_engine *e, const char *model, const char *version, const char *tensor,
                      ec_proto_tensor *out)
{
    struct tstate *ts;
    uint32_t id = 0;
    int rc;

    rc = eng_names_resolve(e, model, version, tensor, &id);
    if (rc)
        return rc;
    rc = eng_tensor_get(e, id, &ts);
    if (rc)
        return rc;
    memset(out, 0, sizeof(*out));
    out->id = (uint32_t)ts->cat.id;
    snprintf(out->model, sizeof(out->model), "%s", ts->cat.model);
    out->version = ts->cat.version;
    snprintf(out->name, sizeof(out->name), "%s", ts->cat.name);
    out->dtype = (uint32_t)ts->cat.dtype;
    out->ndim = ts->cat.ndim;
    memcpy(out->shape, ts->cat.shape, sizeof(out->shape));
    out->rows = ts->cat.rows;
    out->row_bytes = ts->cat.row_bytes;
    out->rows_per_partition = ts->cat.rows_per_partition;
    out->partitions = ts->cat.partitions;
    out->mode = (uint32_t)ts->mode;
    e->st.resolves++;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Owners, tick, touch                                                 */

int ec_engine_owner_open(ec_engine *e, uint64_t owner, pid_t pid)
{
    struct owner *o = calloc(1, sizeof(*o));

    if (!o || ec_u64map_put(&e->owners, owner, o)) {
        free(o);
        return ec_seterr(EC_ENOMEM, "connection table");
    }
    o->id = owner;
    o->pid = pid; /* its start time is read when it first pins (views are rare) */
    return 0;
}

void ec_engine_owner_close(ec_engine *e, uint64_t owner)
{
    struct owner *o = ec_u64map_del(&e->owners, owner);

    if (!o)
        return;
    while (o->pins) {
        struct pin *p = o->pins;
        o->pins = p->next;
        p->unit->pins--;
        e->st.unpins++;
        eng_views_forget(e, p->vj);
        free(p);
    }
    free(o);
}

void ec_engine_tick(ec_engine *e)
{
    double now = mono_now(), window = e->cfg.rate_window > 0 ? e->cfg.rate_window : 60;

    eng_expire_some(e);
    eng_reclaim(e);
    eng_views_tick(e, now);
    if (e->deferred && ec_devtier_active(e->dt))
        eng_retry_deferred(e);
    ec_devtier_tick(e->dt, 0);
    if (now - e->window_start >= window) {
        eng_sweep_idle(e, now - e->window_start);
        e->window_start = now;
    }
    eng_rows_save_history(e, false);
    eng_keep_tick(e);
    eng_gauges(e);
}

void ec_engine_touch(ec_engine *e, uint64_t key)
{
    struct unit *u;

    if (key & EC_RING_ITEM) {
        eng_rows_touch(e, key);
        return;
    }
    u = ec_u64map_get(&e->resident, key);
    if (u) {
        u->ref = true;
        eng_note_request(eng_vstate_of_tensor(e, u->tensor));
        ec_devtier_touch(e->dt, key);
    }
}

/* ------------------------------------------------------------------ */
/* Open, close, accessors, stats                                       */

/* Log the machine's topology, and put this thread (the server thread, which
 * drives the pager) on the NUMA node nearest the data directory's device,
 * before the segment is created, so its pages are first touched there. */
static void place(ec_engine *e)
{
    char line[EC_TOPOLOGY_DESC_MAX];

    e->node = -1;
    if (ec_topology_load(&e->topo)) {
        ec_warn("no hardware topology (%s): buffers and threads stay where they are",
                ec_last_error());
        e->topo = NULL;
        return;
    }
    ec_topology_describe(e->topo, e->data_dir, line, sizeof(line));
    ec_info("topology: %s", line);
    e->node = ec_topology_node_of_path(e->topo, e->data_dir);
    if (ec_topology_numa_nodes(e->topo) > 1 && e->node >= 0) {
        if (ec_topology_bind_thread(e->topo, e->node))
            ec_warn("pager thread not bound to NUMA node %d: %s", e->node, ec_last_error());
        else
            ec_info("pager thread and segment placed on NUMA node %d", e->node);
    }
}

int ec_engine_open(const ec_engine_config *cfg, ec_engine_notify_fn notify, void *notify_arg,
                   ec_engine **out)
{
    ec_engine *e = calloc(1, sizeof(*e));
    char path[4200];
    int rc, swept;

    if (!e)
        return ec_seterr(EC_ENOMEM, "engine");
    e->cfg = *cfg;
    e->lock_fd = -1;
    e->seg.fd = -1;
    e->notify = notify;
    e->notify_arg = notify_arg;
    e->started = time(NULL);
    e->window_start = mono_now();
    e->deferred_tail = &e->deferred;
    snprintf(e->data_dir, sizeof(e->data_dir), "%s", cfg->data_dir);
    if (mkdir(e->data_dir, 0700) < 0 && errno != EEXIST) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot create data directory %s", e->data_dir);
        goto fail;
    }
    rc = eng_lock_data_dir(e);
    if (rc)
        goto fail;
    snprintf(path, sizeof(path), "%s/%s", e->data_dir, EC_CATALOG_FILE);
    rc = ec_catalog_open(path, &e->cat);
    if (rc)
        goto fail;
    swept = ec_import_sweep(e->cat, e->data_dir);
    if (swept == EC_ECORRUPT) {
        rc = swept; /* a lost catalog: start nothing, delete nothing */
        goto fail;
    }
    if (swept < 0)
        ec_warn("orphaned partition files were not removed: %s", ec_last_error());
    else if (swept > 0)
        ec_info("removed %d orphaned partition file(s) from an interrupted import", swept);
    place(e);
    rc = eng_views_open(e);
    if (rc)
        goto fail;
    rc = eng_open_segment(e);
    if (rc)
        goto fail;
    if (e->topo && ec_topology_bind_memory(e->topo, e->seg.data, e->seg.data_size, e->node))
        ec_warn("segment memory not bound to NUMA node %d: %s", e->node, ec_last_error());
    {
        ec_pager_config pc = {.kind = cfg->pager, .queue_depth = cfg->queue_depth,
                              .threads = cfg->io_threads, .region = e->seg.data,
                              .region_len = e->seg.data_size};
        rc = ec_pager_open(&pc, &e->pager);
        if (rc)
            goto fail;
        ec_info("pager: %s", ec_pager_describe(e->pager));
        e->remote_keep = cfg->remote_keep;
        e->remote_keep_reserve = cfg->remote_keep_reserve;
        e->keep.max = cfg->remote_keep_max;
        if (cfg->remote && cfg->remote[0]) {
            rc = ec_pager_remote_open(e->pager, cfg->remote, cfg->remote_threads);
            if (rc)
                goto fail;
            ec_info("remote tier: %s, %u worker(s), what is read is %s", cfg->remote,
                    cfg->remote_threads ? cfg->remote_threads : 4,
                    cfg->remote_keep ? "kept in the partition files" : "not kept");
        }
    }
    eng_files_init(e);
#ifdef EC_FAULT_INJECTION
    /* Test builds: EMBCACHE_INJECT_FAULT=eio:N|short:N|short_once:N makes
     * every Nth partition read fail that way. */
    {
        const char *f = getenv("EMBCACHE_INJECT_FAULT");
        char kind[16];
        unsigned n;
        if (f && sscanf(f, "%15[a-z_]:%u", kind, &n) == 2 && n > 0) {
            enum ec_fault_kind k = !strcmp(kind, "eio")          ? EC_FAULT_EIO
                                   : !strcmp(kind, "short")      ? EC_FAULT_SHORT
                                   : !strcmp(kind, "short_once") ? EC_FAULT_SHORT_ONCE
                                                                 : EC_FAULT_NONE;
            ec_pager_inject(e->pager, k, n);
            ec_warn("fault injection: every %u%s partition read fails as '%s'", n,
                    n == 1 ? "" : "th", kind);
        }
    }
#endif
    /* The staging area of block reads first: a partition a previous daemon
     * left over it is dropped by the adoption below. */
    rc = eng_rows_open(e);
    if (rc)
        goto fail;
    {
        uint64_t room = e->seg.data_size - e->staging_bytes;
        e->budget = cfg->budget && cfg->budget < room ? cfg->budget : room;
    }
    srand48((long)getpid() ^ (long)time(NULL));
    rc = eng_adopt_segment(e);
    if (rc == 0)
        rc = eng_rows_adopt(e);
    if (rc)
        goto fail;
    rc = ec_engine_owner_open(e, EC_ENGINE_OWNER_SELF, 0);
    if (rc)
        goto fail;
    {
        ec_devtier_config dc = {.slab_bytes = cfg->gpu_slab};
        e->dt = ec_devtier_open(&e->seg, ec_backend_get(EC_BACKEND_AUTO), &dc, e->generation,
                                e->topo);
    }
    /* A restart with a smaller budget: shed what the old daemon kept. */
    while (eng_used_bytes(e) > e->budget &&
           (eng_evict_one(e) == 0 || (e->items && ec_items_shrink(e->items))))
        ;
    *out = e;
    return 0;
fail:
    ec_engine_close(e);
    return rc;
}

static void drop_job(ec_page_req *r, void *arg)
{
    struct job *j = r->user;

    (void)arg;
    if (r->block_sums) {
        eng_rows_drop_job(r);
        return;
    }
    free(j->waiters);
    free(j);
}

void ec_engine_close(ec_engine *e)
{
    if (!e)
        return;
    /* This daemon stops serving: its clients' handles are stale from now
     * on (ESTALE at their next call, hits included), so none of them reads
     * memory it frees (its GPU slabs) or a segment nobody keeps up to date.
     * A crash skips this; the next worker's bump does the same. */
    if (e->seg.hdr && e->seg.writable)
        atomic_fetch_add_explicit(&e->seg.hdr->generation, 1, memory_order_release);
    /* Reads still in flight write into the segment: the pager waits for
     * them. Their extents stay unpublished; the next daemon rebuilds the
     * allocator from the index alone. */
    if (e->pager)
        ec_pager_close(e->pager, drop_job, NULL);
    eng_rows_close(e);
    /* The slabs go first (their threads read the segment); limbo is then
     * safe to forget: the allocator is rebuilt from the index next time. */
    ec_devtier_close(e->dt);
    e->dt = NULL;
    for (struct deferred *d = e->deferred, *n; d; d = n) {
        n = d->next;
        free(d);
    }
    for (struct prewarm *pw = e->prewarms, *n; pw; pw = n) {
        n = pw->next;
        eng_prewarm_free(pw);
    }
    for (struct retire *rt = e->retires, *n; rt; rt = n) {
        n = rt->next;
        free(rt->tensors);
        free(rt);
    }
    while (e->owners.len) {
        size_t i = 0;
        while (!e->owners.keys[i])
            i++;
        ec_engine_owner_close(e, e->owners.keys[i]);
    }
    for (size_t i = 0; i < e->nclock; i++)
        free(e->clock[i]);
    free(e->clock);
    for (size_t i = 0; i < e->tensors.cap; i++)
        if (e->tensors.keys[i])
            eng_tstate_free(e->tensors.vals[i]);
    ec_u64map_free(&e->tensors);
    eng_keep_close(e);
    for (size_t i = 0; i < e->versions.cap; i++)
        if (e->versions.keys[i])
            free(e->versions.vals[i]);
    ec_u64map_free(&e->versions);
    ec_u64map_free(&e->resident);
    ec_u64map_free(&e->inflight);
    for (size_t i = 0; i < e->failed.cap; i++)
        if (e->failed.keys[i])
            free(e->failed.vals[i]);
    ec_u64map_free(&e->failed);
    ec_u64map_free(&e->owners);
    eng_views_close(e);
    eng_names_close(e);
    ec_extents_free(e->ext);
    if (e->seg.base)
        ec_segment_close(&e->seg);
    ec_catalog_close(e->cat);
    if (e->lock_fd >= 0)
        close(e->lock_fd);
    ec_topology_free(e->topo);
    free(e);
}

ec_segment *ec_engine_segment(ec_engine *e) { return &e->seg; }
ec_devtier *ec_engine_devtier(ec_engine *e) { return e->dt; }
ec_topology *ec_engine_topology(ec_engine *e) { return e->topo; }
uint64_t ec_engine_epoch_blocking(const ec_engine *e)
{
    return ec_devtier_active(e->dt) ? ec_devtier_limbo_oldest(e->dt) : UINT64_MAX;
}

uint64_t ec_engine_epoch_now(const ec_engine *e)
{
    return atomic_load_explicit(&e->seg.hdr->epoch, memory_order_seq_cst);
}

void ec_engine_set_epoch_source(ec_engine *e, uint64_t (*fn)(void *arg), void *arg)
{
    e->min_epoch = fn;
    e->min_epoch_arg = arg;
}
ec_catalog *ec_engine_catalog(ec_engine *e) { return e->cat; }
struct ec_itemstore *ec_engine_items(ec_engine *e) { return e->items; }
void ec_engine_set_result_hook(ec_engine *e, void (*fn)(void *arg, uint64_t key, uint64_t bytes),
                               void *arg)
{
    e->result_unpublished = fn;
    e->result_arg = arg;
}
uint64_t ec_engine_generation(const ec_engine *e) { return e->generation; }

int ec_engine_region_alloc(ec_engine *e, uint64_t bytes, uint64_t *off)
{
    int rc = eng_alloc_evicting(e, bytes, off);

    if (rc == 0) {
        e->region_bytes += page_round(bytes);
        eng_gauges(e);
    }
    return rc;
}

void ec_engine_region_free(ec_engine *e, uint64_t off, uint64_t bytes)
{
    if (ec_extent_release(e->ext, off, page_round(bytes)) == 0)
        e->region_bytes -= page_round(bytes);
    eng_gauges(e);
}
int ec_engine_event_fd(const ec_engine *e) { return ec_pager_event_fd(e->pager); }
const char *ec_engine_pager_name(const ec_engine *e) { return ec_pager_name(e->pager); }

void ec_engine_inject(ec_engine *e, enum ec_fault_kind kind, unsigned every_nth)
{
    ec_pager_inject(e->pager, kind, every_nth);
}

void ec_engine_hists(const ec_engine *e, ec_hist *fault, ec_hist *read)
{
    ec_pager_stats ps;

    ec_pager_stats_get(e->pager, &ps);
    *fault = e->fault_seconds;
    *read = ps.read_seconds;
}

int ec_engine_stats(ec_engine *e, int (*cb)(const char *name, uint64_t v, void *arg), void *arg)
{
    ec_extent_stats s;
    uint64_t models = 0, versions = 0, tensors = 0, pinned = 0;
    int rc = 0;

    ec_extent_stats_get(e->ext, &s);
    ec_catalog_counts(e->cat, &models, &versions, &tensors);
    for (size_t i = 0; i < e->nclock; i++)
        if (e->clock[i]->pins)
            pinned += e->clock[i]->bytes;
#define S(name, v)                                     \
    do {                                               \
        if ((rc = cb(name, (uint64_t)(v), arg)) != 0)  \
            return rc;                                 \
    } while (0)
    S("generation", e->generation);
    S("numa_nodes", e->topo ? ec_topology_numa_nodes(e->topo) : 1);
    S("data_dir_numa_node", e->node < 0 ? UINT64_MAX : (uint64_t)e->node);
    S("uptime_seconds", time(NULL) - e->started);
    S("segment_bytes", e->seg.size);
    S("data_bytes", s.capacity);
    S("used_bytes", eng_used_bytes(e)); /* under the budget: the staging area is not */
    S("pinned_bytes", pinned);
    S("dynamic_table_bytes", e->region_bytes);
    S("largest_free_bytes", s.largest_free);
    S("free_runs", s.free_runs);
    S("resident_partitions", e->resident.len);
    S("resident_units", e->nclock);
    S("inflight_reads", e->inflight.len);
    S("fault_requests", e->st.fault_requests);
    S("fault_partitions", e->st.fault_parts);
    S("fault_coalesced", e->st.coalesced);
    S("fault_deferred", e->st.deferred);
    {
        ec_pager_stats ps;
        ec_pager_stats_get(e->pager, &ps);
        S("pager_io_uring", !strcmp(ec_pager_name(e->pager), "io_uring"));
        S("pager_reads", ps.reads);
        S("pager_read_bytes", ps.bytes);
        S("pager_direct_reads", ps.direct_reads);
        S("pager_fixed_buffer_reads", ps.fixed_buffer_reads);
        S("pager_retries", ps.retries);
        S("pager_errors", ps.errors);
        S("pager_inflight", ps.inflight);
        S("pager_queued", ps.queued);
    }
    S("page_ins", e->st.page_ins);
    S("page_in_bytes", e->st.page_in_bytes);
    S("checksum_failures", e->st.checksum_failures);
    S("read_errors", e->st.read_errors);
    S("budget_bytes", e->budget);
    S("evictions", e->st.evictions);
    S("expirations", e->st.expirations);
    {
        uint64_t active = 0;
        for (struct prewarm *pw = e->prewarms; pw; pw = pw->next)
            active += !pw->finished;
        S("prewarm_active", active);
    }
    S("prewarm_partitions_done", e->st.prewarm_done);
    S("prewarm_partitions_failed", e->st.prewarm_failed);
    S("retired_versions", e->st.retired_versions);
    S("idle_version_evictions", e->st.idle_evictions);
    S("idle_evicted_bytes", e->st.idle_evicted_bytes);
    S("refreshed_partitions", e->st.refreshed_partitions);
    S("evicted_bytes", e->st.evicted_bytes);
    S("pins_taken", e->st.pins);
    S("pins_released", e->st.unpins);
    S("files_open", e->files_open);
    S("files_opened", e->st.files_opened);
    S("files_closed_for_room", e->st.files_closed);
    S("resolves", e->st.resolves);
    S("resolve_filter_builds", e->st.name_filter_builds);
    S("resolve_filter_refusals", e->st.name_filter_refusals);
    S("resolve_answers_reused", e->st.name_answers_reused);
    S("resolve_catalog_queries", e->st.name_catalog_queries);
    S("restart_kept_partitions", e->st.restart_kept);
    S("view_quarantined_bytes", e->st.view_quarantined);
    S("failed_read_replays", e->st.failed_replays);
    S("view_released_bytes", e->st.view_released);
    S("restart_dropped_partitions", e->st.restart_dropped);
    S("models", models);
    S("versions", versions);
    S("tensors", tensors);
#undef S
    if ((rc = eng_rows_stats(e, cb, arg)) != 0 || (rc = eng_remote_stats(e, cb, arg)) != 0)
        return rc;
    return ec_devtier_stats(e->dt, cb, arg);
}
