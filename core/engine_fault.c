/*
 * engine_fault.c - the partition fault path: single-flight reads handed to
 * the pager (jobs), the requests that wait for them, reads deferred until
 * there is room, and pins (a whole tensor read into one contiguous group
 * for a view).
 *
 * Called by the server loop (ec_engine_fault, _pin, _unpin, _flush,
 * _complete) and by engine_life.c (prewarm). Runs on the server thread;
 * between ec_pager_submit and its completion only the pager's threads
 * touch a job's read (invariant 5, engine_impl.h), and ec_engine_complete
 * reaps finished reads back onto the server thread.
 */
#include "engine.h"
#include "core/engine_impl.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "shm/index.h"

/* ------------------------------------------------------------------ */
/* Pager threads                                                       */

/* Hand a job's read to the pager. Single units get O_DIRECT reads of whole
 * pages (their extent is page-rounded); a partition inside a group may only
 * when it fills whole pages, or a rounded read would overwrite its
 * neighbour. */
static void submit(ec_engine *e, struct job *j, enum ec_page_prio prio)
{
    struct tstate *ts = j->ts;
    ec_page_req *r = &j->req;
    uint32_t io_len = (uint32_t)page_round(j->length);
    bool last = j->part + 1 == ts->cat.partitions;

    memset(r, 0, sizeof(*r));
    r->fd = ts->fd;
    r->dfd = ts->dfd;
    r->file_slot = ts->file_slot;
    r->path = ts->path;
    r->file_off = ec_partfile_part_offset(&ts->meta, j->part);
    r->length = j->length;
    r->io_len = io_len;
    r->direct_ok = j->unit->part != GROUP_PART || io_len == j->length || last;
    r->dest = e->seg.data + j->dest;
    r->checksum = ts->cat.part_checksums[j->part];
    r->part = j->part;
    r->prio = prio;
    r->user = j;
    eng_remote_part(e, ts, j->part, r);
    ec_pager_submit(e->pager, r);
}

static int job_wait(struct job *j, struct request *r)
{
    if (j->nwaiters == j->capwaiters) {
        size_t cap = j->capwaiters ? j->capwaiters * 2 : 4;
        struct request **w = realloc(j->waiters, cap * sizeof(*w));
        if (!w)
            return ec_seterr(EC_ENOMEM, "waiter list");
        j->waiters = w;
        j->capwaiters = cap;
    }
    j->waiters[j->nwaiters++] = r;
    r->pending++;
    return 0;
}

static struct job *job_new(ec_engine *e, struct tstate *ts, uint32_t part, struct unit *u,
                           uint64_t dest)
{
    struct job *j = calloc(1, sizeof(*j));

    if (!j)
        return NULL;
    j->tensor = (uint32_t)ts->cat.id;
    j->part = part;
    j->ts = ts;
    j->unit = u;
    j->dest = dest;
    j->length = (uint32_t)ec_partfile_part_length(&ts->meta, part);
    if (ec_u64map_put(&e->inflight, EC_INDEX_KEY(j->tensor, part), j)) {
        free(j);
        return NULL;
    }
    ts->inflight++;
    return j;
}

/* ------------------------------------------------------------------ */
/* Requests                                                            */

static void pin_register(ec_engine *e, struct request *r, struct unit *g, struct tstate *ts);

static void request_finish(ec_engine *e, struct request *r)
{
    if (r->kind == REQ_FAULT) {
        /* The client learns how the tensor is cached now from every answer. */
        struct tstate *ts = ec_u64map_get(&e->tensors, r->tensor);
        r->res.mode = ts ? (uint32_t)ts->mode : EC_CACHE_PARTITIONS;
        ec_hist_since(&e->fault_seconds, r->start_ns);
    }
    if (r->kind == REQ_PREWARM || r->kind == REQ_PREWARM_PIN)
        eng_prewarm_report(e, r);
    else
        e->notify(e->notify_arg, r->owner, r->token, &r->res);
    free(r);
}

void eng_request_put(ec_engine *e, struct request *r)
{
    assert(r->pending > 0);
    if (--r->pending == 0)
        request_finish(e, r);
}

/* Make partition p of ts resident, or in flight with r waiting for it.
 * EC_ENOSPC when no extent can be had now. */
int eng_want_partition(ec_engine *e, struct tstate *ts, uint32_t p, struct request *r)
{
    uint32_t tensor = (uint32_t)ts->cat.id;
    uint64_t key = EC_INDEX_KEY(tensor, p), off;
    struct unit *u;
    struct job *j;
    int rc;

    if (ts->retired)
        return ec_seterr(EC_ENOENT, "model '%s' version %lld is being retired; resolve the "
                                    "tensor again", ts->cat.model, (long long)ts->cat.version);
    if ((u = ec_u64map_get(&e->resident, key))) {
        u->ref = true;
        return 0;
    }
    if ((j = ec_u64map_get(&e->inflight, key))) {
        e->st.coalesced++;
        return job_wait(j, r);
    }
    {
        struct failed_read *f = ec_u64map_get(&e->failed, key);
        if (f && mono_now() < f->until) {
            e->st.failed_replays++;
            return ec_seterr(f->code, "%s (read %.0f s ago; not read again for %.0f s)",
                             f->msg, EC_FAILED_READ_S - (f->until - mono_now()),
                             f->until - mono_now());
        }
        if (f) {
            ec_u64map_del(&e->failed, key);
            free(f);
        }
    }
    u = calloc(1, sizeof(*u));
    if (!u)
        return ec_seterr(EC_ENOMEM, "unit");
    u->tensor = tensor;
    u->part = p;
    u->bytes = page_round(ec_partfile_part_length(&ts->meta, p));
    u->clock_pos = SIZE_MAX;
    rc = eng_alloc_evicting(e, u->bytes, &off);
    if (rc) {
        free(u);
        return rc;
    }
    u->off = off;
    j = job_new(e, ts, p, u, off);
    if (!j || job_wait(j, r)) {
        if (j) {
            ec_u64map_del(&e->inflight, key);
            ts->inflight--;
            free(j);
        }
        ec_extent_release(e->ext, u->off, u->bytes);
        free(u);
        return ec_seterr(EC_ENOMEM, "out of memory queueing a read");
    }
    submit(e, j, r->kind == REQ_PREWARM ? EC_PAGE_PREWARM : EC_PAGE_DEMAND);
    return 0;
}

/* No extent now, but reads are in flight: once they finish, their units
 * become evictable, so wait for that instead of failing. The request is
 * held (pending) until the partition is retried. */
int eng_defer_partition(ec_engine *e, struct request *r, uint32_t tensor, uint32_t p)
{
    struct deferred *d = calloc(1, sizeof(*d));

    if (!d)
        return ec_seterr(EC_ENOMEM, "deferred read");
    d->r = r;
    d->tensor = tensor;
    d->part = p;
    r->pending++;
    *e->deferred_tail = d;
    e->deferred_tail = &d->next;
    e->st.deferred++;
    return 0;
}

void eng_retry_deferred(ec_engine *e)
{
    struct deferred *d = e->deferred, *next;

    e->deferred = NULL;
    e->deferred_tail = &e->deferred;
    for (; d; d = next) {
        struct tstate *ts;
        int rc;

        next = d->next;
        rc = eng_tensor_get(e, d->tensor, &ts);
        if (rc == 0)
            rc = eng_want_partition(e, ts, d->part, d->r);
        if (rc == EC_ENOSPC && eng_room_coming(e)) {
            /* Still no room: back in the queue, in order. */
            d->next = NULL;
            *e->deferred_tail = d;
            e->deferred_tail = &d->next;
            continue;
        }
        if (rc)
            eng_result_error(&d->r->res, rc, ec_last_error());
        eng_request_put(e, d->r);
        free(d);
    }
}

int ec_engine_fault(ec_engine *e, uint64_t owner, uint64_t token, uint32_t tensor,
                    const uint32_t *parts, uint32_t n)
{
    struct tstate *ts;
    struct request *r;
    int rc;

    rc = eng_tensor_get(e, tensor, &ts);
    if (rc)
        return rc;
    r = calloc(1, sizeof(*r));
    if (!r)
        return ec_seterr(EC_ENOMEM, "fault request");
    r->kind = REQ_FAULT;
    r->owner = owner;
    r->token = token;
    r->tensor = tensor;
    r->start_ns = ec_hist_now_ns();
    r->pending = 1; /* held until every partition has been looked at */
    e->st.fault_requests++;
    eng_note_request(ts->vs);

    /* Cached by rows: nothing to load; the answer's mode redirects the
     * client to the item index (a client that has not seen a mode switch). */
    for (uint32_t i = 0; i < n && ts->mode != EC_CACHE_ROWS; i++) {
        uint32_t p = parts[i];

        if (p >= ts->cat.partitions) {
            ec_seterr(EC_ERANGE, "tensor '%s' has %llu partitions; partition %u requested",
                      ts->cat.name, (unsigned long long)ts->cat.partitions, p);
            eng_result_error(&r->res, EC_ERANGE, ec_last_error());
            break;
        }
        e->st.fault_parts++;
        rc = eng_want_partition(e, ts, p, r);
        if (rc == EC_ENOSPC && eng_room_coming(e))
            rc = eng_defer_partition(e, r, tensor, p);
        if (rc) {
            eng_result_error(&r->res, rc, ec_last_error());
            break;
        }
    }
    eng_request_put(e, r);
    return 0;
}

/* Remember a failed read for EC_FAILED_READ_S (best effort). */
static void remember_failure(ec_engine *e, uint64_t key, int code, const char *msg)
{
    struct failed_read *f = ec_u64map_get(&e->failed, key);

    if (!f) {
        if (!(f = calloc(1, sizeof(*f))))
            return;
        if (ec_u64map_put(&e->failed, key, f)) {
            free(f);
            return;
        }
    }
    f->until = mono_now() + EC_FAILED_READ_S;
    f->code = code;
    snprintf(f->msg, sizeof(f->msg), "%s", msg);
}

/* Finish one job on the server thread. */
static void job_complete(ec_engine *e, struct job *j)
{
    struct tstate *ts = j->ts;
    struct unit *u = j->unit;
    uint64_t key = EC_INDEX_KEY(j->tensor, j->part);
    bool group = u->part == GROUP_PART; /* u may be freed below */
    bool published = false;       /* briefly visible: a GPU gather may hold it */
    int rc = j->req.rc;

    eng_remote_done(e, ts, &j->req);
    if (eng_remote_retry(e, ts, &j->req)) {
        /* A bad local copy of remote bytes: read them from the cluster. */
        submit(e, j, j->req.prio);
        return;
    }
    ec_u64map_del(&e->inflight, key);
    ts->inflight--;
    if (rc == 0 && ts->retired) {
        rc = EC_ENOENT;
        snprintf(j->req.msg, sizeof(j->req.msg), "the version was retired");
    }
    if (rc)
        snprintf(j->msg, sizeof(j->msg), "tensor '%.64s' (model '%.64s' version %lld): %.300s",
                 j->ts->cat.name, j->ts->cat.model, (long long)j->ts->cat.version, j->req.msg);
    if (rc == 0 && !group && ts->mode == EC_CACHE_ROWS) {
        /* The tensor switched to rows while this partition was read: it is
         * not cached, and its waiters are told the new mode. */
        ec_extent_release(e->ext, u->off, u->bytes);
        free(u);
        u = NULL;
        for (size_t i = 0; i < j->nwaiters; i++)
            eng_request_put(e, j->waiters[i]);
        free(j->waiters);
        free(j);
        goto pins;
    }
    if (rc == 0) {
        e->st.page_ins++;
        e->st.page_in_bytes += j->length;
        ts->rst.bytes_read += j->length;
        rc = ec_index_insert(&e->seg, j->tensor, j->part, j->dest, j->length);
        if (rc == 0 && ec_u64map_put(&e->resident, key, u)) {
            ec_index_remove(&e->seg, j->tensor, j->part, NULL, NULL);
            rc = EC_ENOMEM;
            published = true;
        }
        if (rc)
            snprintf(j->msg, sizeof(j->msg), "publishing partition %u: %.400s", j->part,
                     ec_last_error());
    } else if (rc == EC_ECHECKSUM) {
        e->st.checksum_failures++;
        ec_error("%s", j->msg);
        remember_failure(e, key, rc, j->msg);
    } else if (ts->retired) {
        /* not an error of the disk: the read lost a race with retire */
    } else {
        e->st.read_errors++;
        ec_error("%s", j->msg);
        remember_failure(e, key, rc, j->msg);
    }

    if (!group) {
        if (rc == 0) {
            u->ref = true;
            u->expires = eng_expiry_of(e);
            eng_clock_add(e, u);
            eng_account(e, u, +1);
        } else {
            if (published)
                eng_extent_retire(e, u->off, u->bytes);
            else
                ec_extent_release(e->ext, u->off, u->bytes);
            free(u);
            u = NULL;
        }
    } else {
        if (rc && u->status == 0) {
            u->status = rc;
            snprintf(u->msg, sizeof(u->msg), "%s", j->msg);
        }
        u->pending--;
    }

    for (size_t i = 0; i < j->nwaiters; i++) {
        if (rc)
            eng_result_error(&j->waiters[i]->res, rc, j->msg);
        eng_request_put(e, j->waiters[i]);
    }
    free(j->waiters);
    free(j);

    if (group && u->pending == 0) {
        struct request *w = u->waiters, *next;
        u->waiters = NULL;
        u->loading = false;
        if (u->status) {
            int st = u->status;
            char msg[EC_ERRMSG_MAX];
            snprintf(msg, sizeof(msg), "%s", u->msg);
            eng_unit_drop(e, u, false);
            for (; w; w = next) {
                next = w->next;
                eng_result_error(&w->res, st, msg);
                request_finish(e, w);
            }
        } else {
            u->ref = true;
            eng_clock_add(e, u);
            eng_account(e, u, +1);
            for (; w; w = next) {
                next = w->next;
                pin_register(e, w, u, ts);
                request_finish(e, w);
            }
        }
    }
pins:
    /* Pins that waited for this tensor's single reads to drain. */
    if (ts->inflight == 0 && ts->pin_waiters) {
        struct request *w = ts->pin_waiters, *next;
        ts->pin_waiters = NULL;
        for (; w; w = next) {
            next = w->next;
            w->next = NULL;
            eng_pin_start(e, w);
        }
    }
}

static void read_done(ec_page_req *r, void *arg)
{
    if (r->block_sums)
        eng_rows_read_done(arg, r); /* a block read of a tensor cached by rows */
    else
        job_complete(arg, r->user);
}

void ec_engine_flush(ec_engine *e)
{
    /* Reads waiting for memory in limbo: retry each turn (the server turns
     * every millisecond while they wait; ec_engine_waiting). The tick may
     * have reclaimed the memory already, so retry whether or not this call
     * frees anything: a wait must not depend on who freed the memory. */
    if (e->deferred && ec_devtier_active(e->dt)) {
        eng_reclaim(e);
        eng_retry_deferred(e);
    }
    ec_pager_flush(e->pager);
}

bool ec_engine_waiting(const ec_engine *e)
{
    return e->deferred && ec_devtier_limbo_host_bytes(e->dt) > 0;
}

void ec_engine_complete(ec_engine *e)
{
    ec_pager_reap(e->pager, read_done, e);
    if (e->deferred)
        eng_retry_deferred(e);
    if (e->retires)
        eng_retires_check(e);
    eng_gauges(e);
}

/* ------------------------------------------------------------------ */
/* Pins                                                                */

static void pin_register(ec_engine *e, struct request *r, struct unit *g, struct tstate *ts)
{
    struct owner *o = ec_u64map_get(&e->owners, r->owner);
    struct pin *p;

    if (r->res.status)
        return;
    if (!o) {
        /* The connection went away while its pin was loading. */
        eng_result_error(&r->res, EC_ECONN, "connection closed");
        return;
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        eng_result_error(&r->res, EC_ENOMEM, "pin");
        return;
    }
    /* Pinned whole: its partitions serve it best, whatever its size. */
    if (ts->mode == EC_CACHE_ROWS)
        eng_rows_switch(e, ts, EC_CACHE_PARTITIONS);
    p->id = ++e->next_pin;
    p->tensor = r->tensor;
    p->unit = g;
    if (o->pid > 0 && !o->start)
        o->start = eng_proc_start(o->pid);
    p->vj = eng_views_record(e, o->pid, o->start, g->off, g->bytes);
    p->next = o->pins;
    o->pins = p;
    g->pins++;
    g->ref = true;
    e->st.pins++;
    r->res.pin_id = p->id;
    r->res.offset = g->off;
    r->res.length = ts->cat.rows * ts->cat.row_bytes;
}

/* Drop the tensor's single-partition units so its rows can be laid out
 * contiguously. Fails if one of them is pinned (cannot happen today: only
 * groups are pinned). */
static void drop_singles(ec_engine *e, struct tstate *ts)
{
    for (uint64_t p = 0; p < ts->cat.partitions; p++) {
        struct unit *u = ec_u64map_get(&e->resident, EC_INDEX_KEY(ts->cat.id, p));
        if (u && u->part != GROUP_PART && u->pins == 0) {
            eng_unit_drop(e, u, false);
        }
    }
}

void eng_pin_start(ec_engine *e, struct request *r)
{
    struct tstate *ts;
    struct unit *g;
    uint64_t total, off, rpp_bytes;
    int rc;

    rc = eng_tensor_get(e, r->tensor, &ts);
    if (rc == 0 && ts->retired)
        rc = ec_seterr(EC_ENOENT, "model '%s' version %lld is being retired", ts->cat.model,
                       (long long)ts->cat.version);
    if (rc) {
        eng_result_error(&r->res, rc, ec_last_error());
        request_finish(e, r);
        return;
    }
    if ((g = ts->group)) {
        if (g->loading) {
            r->next = g->waiters;
            g->waiters = r;
            return;
        }
        pin_register(e, r, g, ts);
        request_finish(e, r);
        return;
    }
    if (ts->inflight) {
        r->next = ts->pin_waiters;
        ts->pin_waiters = r;
        return;
    }
    total = ts->cat.rows * ts->cat.row_bytes;
    drop_singles(e, ts);
    g = calloc(1, sizeof(*g));
    if (!g) {
        eng_result_error(&r->res, EC_ENOMEM, "group");
        request_finish(e, r);
        return;
    }
    g->tensor = r->tensor;
    g->part = GROUP_PART;
    g->bytes = page_round(total ? total : 1);
    g->clock_pos = SIZE_MAX;
    g->loading = true;
    rc = eng_alloc_evicting(e, g->bytes, &off);
    if (rc) {
        free(g);
        ec_adderr(rc, "cannot pin tensor '%s' (%llu bytes) contiguously", ts->cat.name,
                  (unsigned long long)total);
        eng_result_error(&r->res, rc, ec_last_error());
        request_finish(e, r);
        return;
    }
    g->off = off;
    ts->group = g;
    g->waiters = r;
    rpp_bytes = ts->cat.rows_per_partition * ts->cat.row_bytes;
    for (uint64_t p = 0; p < ts->cat.partitions; p++) {
        struct job *j = job_new(e, ts, (uint32_t)p, g, off + p * rpp_bytes);
        if (!j) {
            if (g->status == 0) {
                g->status = EC_ENOMEM;
                snprintf(g->msg, sizeof(g->msg), "out of memory queueing reads");
            }
            break;
        }
        g->pending++;
        submit(e, j, EC_PAGE_DEMAND);
    }
    if (g->pending == 0) {
        /* Nothing was queued (an empty tensor, or no memory at all). */
        struct request *w = g->waiters;
        g->waiters = NULL;
        g->loading = false;
        if (g->status || total == 0) {
            if (g->status)
                eng_result_error(&w->res, g->status, g->msg);
            else
                eng_result_error(&w->res, EC_EINVAL, "tensor has no rows to view");
            ts->group = NULL;
            ec_extent_release(e->ext, g->off, g->bytes);
            free(g);
        } else {
            eng_clock_add(e, g);
            pin_register(e, w, g, ts);
        }
        request_finish(e, w);
    }
}

int ec_engine_pin(ec_engine *e, uint64_t owner, uint64_t token, uint32_t tensor)
{
    struct tstate *ts;
    struct request *r;
    int rc;

    rc = eng_tensor_get(e, tensor, &ts);
    if (rc)
        return rc;
    if (!ec_u64map_get(&e->owners, owner))
        return ec_seterr(EC_EINTERNAL, "pin from unknown connection %llu",
                         (unsigned long long)owner);
    r = calloc(1, sizeof(*r));
    if (!r)
        return ec_seterr(EC_ENOMEM, "pin request");
    r->kind = REQ_PIN;
    r->owner = owner;
    r->token = token;
    r->tensor = tensor;
    eng_pin_start(e, r);
    return 0;
}

uint32_t ec_engine_owner_pins(ec_engine *e, uint64_t owner)
{
    struct owner *o = ec_u64map_get(&e->owners, owner);
    uint32_t n = 0;

    for (struct pin *p = o ? o->pins : NULL; p; p = p->next)
        n++;
    return n;
}

int ec_engine_unpin(ec_engine *e, uint64_t owner, uint64_t pin_id)
{
    struct owner *o = ec_u64map_get(&e->owners, owner);

    for (struct pin **pp = o ? &o->pins : NULL; pp && *pp; pp = &(*pp)->next) {
        struct pin *p = *pp;
        if (p->id != pin_id)
            continue;
        *pp = p->next;
        assert(p->unit->pins > 0);
        p->unit->pins--;
        e->st.unpins++;
        eng_views_forget(e, p->vj);
        free(p);
        return 0;
    }
    return ec_seterr(EC_ENOENT, "this connection holds no pin %llu",
                     (unsigned long long)pin_id);
}
