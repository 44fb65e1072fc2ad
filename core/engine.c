/*
 * engine.c - residency of partitions in the segment: page-in, single
 * flight, pins, eviction, warm restart (see engine.h).
 *
 * State, all private to the server thread except the job queues:
 *
 *   tensors    id -> struct tstate: catalog record, open partition file,
 *              the contiguous group (view placement) if any
 *   resident   EC_INDEX_KEY(tensor, part) -> struct unit that holds it
 *   inflight   EC_INDEX_KEY(tensor, part) -> struct job reading it
 *   clock      the resident units in CLOCK order, with a hand
 *   owners     connection id -> struct owner and its pins
 *
 * A unit is what is allocated and evicted as one: a single partition, or a
 * whole tensor laid out row-major in one extent (a group, made for a view).
 *
 * Invariants:
 *   1. A key is in at most one of `resident` and `inflight`.
 *   2. A key is in the segment's index iff it is in `resident`.
 *   3. A unit with pins > 0 or loading is never evicted.
 *   4. An extent is released only after every index entry pointing into it
 *      was removed (which bumps the entries' seqlocks): a reader's copy
 *      from a reused extent always fails its check.
 *   5. Between ec_pager_submit and its completion only the pager touches a
 *      job's page request and the extent's bytes.
 */
#include "engine.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/u64map.h"
#include "core/devtier.h"
#include "core/import.h"
#include "core/partfile.h"
#include "core/topology.h"
#include "shm/extent.h"
#include "shm/index.h"

#define GROUP_PART UINT32_MAX

struct unit;

/* Per model version: its residency policy and how much it is used. */
struct vstate {
    int64_t version_id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    uint64_t min_resident;       /* bytes eviction leaves resident */
    double min_rate;             /* requests/s under which it is idle; 0: never */
    uint64_t resident;           /* bytes of its units now resident */
    uint64_t requests;           /* in the current window */
    double last_access;          /* monotonic seconds */
};

struct tstate {
    ec_cat_tensor cat;
    struct vstate *vs;
    ec_partfile_meta meta;
    int fd;                      /* buffered */
    int dfd;                     /* O_DIRECT, or -1 where the file system refuses */
    int file_slot;               /* the pager's fixed-file slot for dfd, or -1 */
    char path[4096 + EC_CAT_PATH_MAX + 2];
    struct unit *group;          /* contiguous placement, NULL when none */
    uint32_t inflight;           /* jobs reading this tensor's partitions */
    struct request *pin_waiters; /* pins waiting for inflight to reach 0 */
    bool retired;                /* being retired: no new reads */
};

struct unit {
    double expires;              /* monotonic seconds; 0: no TTL */
    bool counted;                /* its bytes are in its version's resident */
    uint32_t tensor;
    uint32_t part;               /* GROUP_PART for a group */
    uint64_t off;                /* extent, from the data area */
    uint64_t bytes;              /* extent size (page multiple) */
    uint32_t pins;
    bool ref;
    bool loading;                /* group still being read */
    uint32_t pending;            /* group: reads outstanding */
    int status;                  /* group: first read error */
    char msg[EC_ERRMSG_MAX];
    size_t clock_pos;            /* index in the clock, SIZE_MAX when absent */
    struct request *waiters;     /* group: pins waiting for the load */
};

/* FAULT and PIN answer a client; PREWARM and PREWARM_PIN report to the
 * prewarm that issued them instead. */
enum req_kind { REQ_FAULT, REQ_PIN, REQ_PREWARM, REQ_PREWARM_PIN };

struct prewarm;

struct request {
    enum req_kind kind;
    uint64_t owner;
    uint64_t token;
    uint32_t tensor;
    uint32_t pending;
    ec_engine_result res;
    struct prewarm *pw;          /* REQ_PREWARM*: whose progress this is */
    uint64_t parts;              /* REQ_PREWARM*: partitions it covers */
    struct request *next;        /* in a pin wait list */
};

/* A version being loaded ahead of traffic (see ec_engine_prewarm). */
struct prewarm {
    int64_t version_id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    uint32_t *tensors;
    uint32_t ntensors;
    uint32_t ti, pi;             /* cursor: next tensor, next partition */
    uint64_t total, done, failed, bytes;
    unsigned outstanding;
    bool pin, finished;
    bool device;                 /* then promote it to the GPUs (EC_PREWARM_DEVICE) */
    char msg[EC_ERRMSG_MAX];     /* the first failure */
    struct prewarm *next;
};

/* A retire waiting for its version's reads in flight to finish. */
struct retire {
    uint64_t owner, token;
    int64_t version_id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    uint32_t *tensors;
    uint32_t ntensors;
    struct retire *next;
};

/* A partition waiting for room (see defer_partition). */
struct deferred {
    struct request *r;
    uint32_t tensor, part;
    struct deferred *next;
};

struct job {
    uint32_t tensor, part;
    struct tstate *ts;
    struct unit *unit;           /* the single unit, or the group */
    uint64_t dest;               /* from the data area */
    uint32_t length;
    ec_page_req req;             /* the pager's; result in req.rc / req.msg */
    char msg[EC_ERRMSG_MAX];     /* the error as clients see it */
    struct request **waiters;
    size_t nwaiters, capwaiters;
};

struct pin {
    uint64_t id;
    uint32_t tensor;
    struct unit *unit;
    struct pin *next;
};

struct owner {
    uint64_t id;
    struct pin *pins;
};

struct ec_engine {
    ec_engine_config cfg;
    char data_dir[4096];
    int lock_fd;
    ec_catalog *cat;
    ec_segment seg;
    ec_extents *ext;
    uint64_t generation;
    ec_engine_notify_fn notify;
    void *notify_arg;

    ec_u64map tensors, resident, inflight, owners;
    struct unit **clock;
    size_t nclock, capclock, hand;
    struct deferred *deferred, **deferred_tail;
    size_t ttl_hand;
    uint64_t budget;
    struct prewarm *prewarms;
    struct retire *retires;
    ec_u64map versions;          /* version id -> struct vstate */
    double window_start;
    uint64_t next_pin;

    /* Pager: submit queue (server -> readers), done queue (readers -> server). */
    ec_pager *pager;
    ec_topology *topo;           /* NULL when hwloc could not load one */
    ec_devtier *dt;              /* the device tier (off: a no-op) */
    uint64_t (*min_epoch)(void *arg); /* least epoch clients hold */
    void *min_epoch_arg;
    int node;                    /* NUMA node of the data dir's device, or -1 */

    struct {
        uint64_t fault_requests, fault_parts, coalesced, page_ins, page_in_bytes,
            checksum_failures, read_errors, evictions, evicted_bytes, pins, unpins,
            restart_kept, restart_dropped, resolves, deferred, expirations,
            prewarm_done, prewarm_failed, retired_versions, refreshed_partitions,
            idle_evictions, idle_evicted_bytes;
    } st;
    time_t started;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* A client used a version: count it toward its request rate. */
static void note_request(struct vstate *vs)
{
    if (vs) {
        vs->requests++;
        vs->last_access = mono_now();
    }
}

static struct vstate *vstate_of_tensor(const ec_engine *e, uint32_t tensor)
{
    struct tstate *ts = ec_u64map_get(&e->tensors, tensor);
    return ts ? ts->vs : NULL;
}

/* Add (sign > 0) or take away a unit's bytes from its version's resident
 * bytes, once each way. */
static void account(ec_engine *e, struct unit *u, int sign)
{
    struct vstate *vs = vstate_of_tensor(e, u->tensor);

    if (!vs || (sign > 0) == u->counted)
        return;
    if (sign > 0)
        vs->resident += u->bytes;
    else
        vs->resident -= u->bytes < vs->resident ? u->bytes : vs->resident;
    u->counted = sign > 0;
}

static uint64_t page_round(uint64_t n)
{
    return (n + EC_SHM_PAGE - 1) / EC_SHM_PAGE * EC_SHM_PAGE;
}

static void clock_add(ec_engine *e, struct unit *u)
{
    if (e->nclock == e->capclock) {
        size_t cap = e->capclock ? e->capclock * 2 : 256;
        struct unit **c = realloc(e->clock, cap * sizeof(*c));
        if (!c) {
            /* Without a clock slot the unit is simply never evicted. */
            u->clock_pos = SIZE_MAX;
            return;
        }
        e->clock = c;
        e->capclock = cap;
    }
    u->clock_pos = e->nclock;
    e->clock[e->nclock++] = u;
}

static void clock_del(ec_engine *e, struct unit *u)
{
    size_t i = u->clock_pos;

    if (i == SIZE_MAX)
        return;
    assert(i < e->nclock && e->clock[i] == u);
    e->clock[i] = e->clock[--e->nclock];
    e->clock[i]->clock_pos = i;
    u->clock_pos = SIZE_MAX;
    if (e->hand >= e->nclock)
        e->hand = 0;
}

static void gauges(ec_engine *e)
{
    ec_extent_stats s;

    ec_extent_stats_get(e->ext, &s);
    atomic_store_explicit(&e->seg.hdr->used_bytes, s.used, memory_order_relaxed);
    atomic_store_explicit(&e->seg.hdr->resident_partitions, e->resident.len,
                          memory_order_relaxed);
}

static void result_error(ec_engine_result *r, int code, const char *msg)
{
    if (r->status == 0) {
        r->status = code;
        snprintf(r->msg, sizeof(r->msg), "%s", msg);
    }
}

/* ------------------------------------------------------------------ */
/* Tensors                                                             */

static void tstate_free(struct tstate *ts)
{
    if (!ts)
        return;
    if (ts->fd >= 0)
        close(ts->fd);
    if (ts->dfd >= 0)
        close(ts->dfd);
    ec_cat_tensor_clear(&ts->cat);
    free(ts);
}

/* The version's state, created with its policy from the catalog. NULL only
 * when out of memory (the version then has no policy). */
static struct vstate *vstate_get(ec_engine *e, int64_t version_id, const char *model,
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
static int tensor_get(ec_engine *e, uint32_t id, struct tstate **out)
{
    struct tstate *ts = ec_u64map_get(&e->tensors, id);
    char path[4096 + EC_CAT_PATH_MAX + 2];
    int rc;

    if (ts) {
        *out = ts;
        return 0;
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
    snprintf(path, sizeof(path), "%s/%s", e->data_dir, ts->cat.path);
    rc = ec_partfile_open(path, &ts->meta, &ts->fd);
    if (rc) {
        ec_adderr(rc, "tensor '%s' of model '%s' version %lld", ts->cat.name, ts->cat.model,
                  (long long)ts->cat.version);
        goto fail;
    }
    if (ts->meta.header_checksum != ts->cat.header_checksum ||
        ts->meta.partitions != ts->cat.partitions || ts->meta.rows != ts->cat.rows ||
        ts->meta.row_bytes != ts->cat.row_bytes ||
        ts->meta.rows_per_partition != ts->cat.rows_per_partition) {
        rc = ec_seterr(EC_ECORRUPT,
                       "partition file %s of tensor '%s' (model '%s' version %lld) is not the "
                       "file that was imported; re-import the version",
                       path, ts->cat.name, ts->cat.model, (long long)ts->cat.version);
        goto fail;
    }
    snprintf(ts->path, sizeof(ts->path), "%s", path);
    ts->vs = vstate_get(e, ts->cat.version_id, ts->cat.model, ts->cat.version);
    /* O_DIRECT where the file system allows it (not tmpfs): reads then go
     * from the device into the segment without the page cache. */
    ts->dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
    ts->file_slot = ec_pager_file_add(e->pager, ts->dfd);
    rc = ec_u64map_put(&e->tensors, id, ts);
    if (rc) {
        ec_pager_file_del(e->pager, ts->file_slot);
        rc = ec_seterr(EC_ENOMEM, "tensor table");
        goto fail;
    }
    *out = ts;
    return 0;
fail:
    tstate_free(ts);
    return rc;
}

int ec_engine_resolve(ec_engine *e, const char *model, const char *version, const char *tensor,
                      ec_proto_tensor *out)
{
    ec_cat_tensor t = {0};
    struct tstate *ts;
    int rc;

    rc = ec_catalog_resolve(e->cat, model, version, tensor, &t);
    if (rc)
        return rc;
    if (t.id <= 0 || t.id > UINT32_MAX) {
        ec_cat_tensor_clear(&t);
        return ec_seterr(EC_EINTERNAL, "tensor id %lld out of range", (long long)t.id);
    }
    rc = tensor_get(e, (uint32_t)t.id, &ts);
    ec_cat_tensor_clear(&t);
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
    e->st.resolves++;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Eviction                                                            */

/* Free the extent of entries just removed from the index. With the device
 * tier on, GPU gathers may still be reading it: it waits in limbo until no
 * epoch that could have seen the entries is held. */
static void extent_retire(ec_engine *e, uint64_t off, uint64_t bytes)
{
    int rc = 0;

    if (ec_devtier_active(e->dt))
        ec_devtier_retire_host(e->dt, off, bytes, ec_devtier_epoch_bump(e->dt));
    else
        rc = ec_extent_release(e->ext, off, bytes);
    assert(rc == 0);
    (void)rc;
}

/* Remove a unit from the index and the clock and free its extent. `evicted`
 * says whether to count it as an eviction (a failed load or a re-layout is
 * not one). */
static void unit_drop(ec_engine *e, struct unit *u, bool evicted)
{
    struct tstate *ts = ec_u64map_get(&e->tensors, u->tensor);
    uint32_t first = u->part, last = u->part;

    assert(u->pins == 0);
    if (u->part == GROUP_PART) {
        first = 0;
        last = ts ? (uint32_t)ts->cat.partitions - 1 : 0;
        if (ts && ts->group == u)
            ts->group = NULL;
    }
    for (uint64_t p = first; p <= last; p++) {
        uint64_t key = EC_INDEX_KEY(u->tensor, p);
        if (ec_u64map_get(&e->resident, key) != u)
            continue;
        ec_u64map_del(&e->resident, key);
        ec_index_remove(&e->seg, u->tensor, (uint32_t)p, NULL, NULL);
        ec_devtier_drop(e->dt, u->tensor, (uint32_t)p);
    }
    clock_del(e, u);
    account(e, u, -1);
    /* Invariant 4: the entries are gone (their seqs bumped); now the extent. */
    extent_retire(e, u->off, u->bytes);
    if (evicted) {
        e->st.evictions++;
        e->st.evicted_bytes += u->bytes;
    }
    free(u);
}

static void free_host_extent(void *arg, uint64_t off, uint64_t bytes)
{
    ec_engine *e = arg;
    int rc = ec_extent_release(e->ext, off, bytes);

    assert(rc == 0);
    (void)rc;
}

/* Free the extents in limbo that no client's gather can still read. */
static uint64_t reclaim(ec_engine *e)
{
    uint64_t m;

    if (!ec_devtier_active(e->dt))
        return 0;
    m = e->min_epoch ? e->min_epoch(e->min_epoch_arg) : UINT64_MAX;
    return ec_devtier_reclaim(e->dt, m, free_host_extent, e);
}

/* Will memory come back without evicting: reads in flight (their units
 * become evictable) or extents in limbo? Then an allocation that failed
 * waits (defer_partition) instead of failing. */
static bool room_coming(const ec_engine *e)
{
    return e->inflight.len > 0 || ec_devtier_limbo_host_bytes(e->dt) > 0;
}

/* A unit its version's minimum residency keeps in memory. */
static bool protected_unit(const ec_engine *e, const struct unit *u)
{
    const struct vstate *vs = vstate_of_tensor(e, u->tensor);

    return vs && vs->min_resident && vs->resident < vs->min_resident + u->bytes;
}

/* Evict one unevictable-free unit by CLOCK. EC_ENOSPC when none can go. */
static int evict_one(ec_engine *e)
{
    for (size_t steps = 0; steps < 2 * e->nclock + 1 && e->nclock; steps++) {
        struct unit *u;
        if (e->hand >= e->nclock)
            e->hand = 0;
        u = e->clock[e->hand];
        if (u->pins == 0 && !u->loading && !protected_unit(e, u)) {
            if (!u->ref) {
                unit_drop(e, u, true);
                return 0;
            }
            u->ref = false;
        }
        e->hand++;
    }
    return EC_ENOSPC;
}

static uint64_t used_bytes(const ec_engine *e)
{
    ec_extent_stats s;

    ec_extent_stats_get(e->ext, &s);
    return s.used;
}

/* An extent of `bytes`, evicting until both the budget and the segment
 * have room: the budget holds at all times (an allocation never takes the
 * host tier past it), and nothing pinned or loading is evicted. */
static int alloc_evicting(ec_engine *e, uint64_t bytes, uint64_t *off)
{
    uint64_t rounded = page_round(bytes);

    if (rounded > e->budget)
        return ec_seterr(EC_ENOSPC, "budget exhausted: %llu bytes asked for, the budget is "
                                    "%llu; start embcached with a larger --budget",
                         (unsigned long long)rounded, (unsigned long long)e->budget);
    for (;;) {
        int rc = EC_ENOSPC;
        if (used_bytes(e) + rounded <= e->budget)
            rc = ec_extent_alloc(e->ext, bytes, off);
        if (rc != EC_ENOSPC)
            return rc;
        if (reclaim(e))
            continue;
        /* What is in limbo comes back as soon as the gathers reading it
         * finish (microseconds): wait for it rather than evict more. The
         * caller defers the read (room_coming). */
        if (ec_devtier_limbo_host_bytes(e->dt) >= rounded)
            return ec_seterr(EC_ENOSPC, "no room for %llu bytes until GPU gathers in flight "
                                        "finish reading freed memory",
                             (unsigned long long)bytes);
        if (evict_one(e)) {
            ec_extent_stats s;
            ec_extent_stats_get(e->ext, &s);
            return ec_seterr(EC_ENOSPC,
                             "budget exhausted: no room for %llu bytes (budget %llu, segment "
                             "%llu): %llu bytes are pinned or being loaded and nothing else "
                             "can be evicted; release views, evict a pinned version, or start "
                             "embcached with a larger --budget",
                             (unsigned long long)bytes, (unsigned long long)e->budget,
                             (unsigned long long)s.capacity, (unsigned long long)s.used);
        }
    }
}

/* When a unit published now expires: the TTL with +-jitter, so partitions
 * filled together do not all expire together. 0: never. */
static double expiry_of(const ec_engine *e)
{
    double ttl = e->cfg.ttl_seconds, j = e->cfg.ttl_jitter;

    if (ttl <= 0)
        return 0;
    return mono_now() + ttl * (1.0 + j * (2.0 * drand48() - 1.0));
}

/* Evict expired units, a bounded slice of the clock per call so a large
 * segment costs little per tick. */
static void expire_some(ec_engine *e)
{
    double now = mono_now();

    if (e->cfg.ttl_seconds <= 0 || !e->nclock)
        return;
    for (size_t n = 0; n < 4096 && e->nclock; n++) {
        struct unit *u;
        if (e->ttl_hand >= e->nclock)
            e->ttl_hand = 0;
        u = e->clock[e->ttl_hand];
        if (u->expires > 0 && u->expires <= now && u->pins == 0 && !u->loading) {
            unit_drop(e, u, false);
            e->st.expirations++;
            continue; /* the slot now holds another unit */
        }
        e->ttl_hand++;
    }
}

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
static void pin_start(ec_engine *e, struct request *r);

static void prewarm_report(ec_engine *e, struct request *r);

static void request_finish(ec_engine *e, struct request *r)
{
    if (r->kind == REQ_PREWARM || r->kind == REQ_PREWARM_PIN)
        prewarm_report(e, r);
    else
        e->notify(e->notify_arg, r->owner, r->token, &r->res);
    free(r);
}

static void request_put(ec_engine *e, struct request *r)
{
    assert(r->pending > 0);
    if (--r->pending == 0)
        request_finish(e, r);
}

/* Make partition p of ts resident, or in flight with r waiting for it.
 * EC_ENOSPC when no extent can be had now. */
static int want_partition(ec_engine *e, struct tstate *ts, uint32_t p, struct request *r)
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
    u = calloc(1, sizeof(*u));
    if (!u)
        return ec_seterr(EC_ENOMEM, "unit");
    u->tensor = tensor;
    u->part = p;
    u->bytes = page_round(ec_partfile_part_length(&ts->meta, p));
    u->clock_pos = SIZE_MAX;
    rc = alloc_evicting(e, u->bytes, &off);
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
static int defer_partition(ec_engine *e, struct request *r, uint32_t tensor, uint32_t p)
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

static void retry_deferred(ec_engine *e)
{
    struct deferred *d = e->deferred, *next;

    e->deferred = NULL;
    e->deferred_tail = &e->deferred;
    for (; d; d = next) {
        struct tstate *ts;
        int rc;

        next = d->next;
        rc = tensor_get(e, d->tensor, &ts);
        if (rc == 0)
            rc = want_partition(e, ts, d->part, d->r);
        if (rc == EC_ENOSPC && room_coming(e)) {
            /* Still no room: back in the queue, in order. */
            d->next = NULL;
            *e->deferred_tail = d;
            e->deferred_tail = &d->next;
            continue;
        }
        if (rc)
            result_error(&d->r->res, rc, ec_last_error());
        request_put(e, d->r);
        free(d);
    }
}

int ec_engine_fault(ec_engine *e, uint64_t owner, uint64_t token, uint32_t tensor,
                    const uint32_t *parts, uint32_t n)
{
    struct tstate *ts;
    struct request *r;
    int rc;

    rc = tensor_get(e, tensor, &ts);
    if (rc)
        return rc;
    r = calloc(1, sizeof(*r));
    if (!r)
        return ec_seterr(EC_ENOMEM, "fault request");
    r->kind = REQ_FAULT;
    r->owner = owner;
    r->token = token;
    r->tensor = tensor;
    r->pending = 1; /* held until every partition has been looked at */
    e->st.fault_requests++;
    note_request(ts->vs);

    for (uint32_t i = 0; i < n; i++) {
        uint32_t p = parts[i];

        if (p >= ts->cat.partitions) {
            ec_seterr(EC_ERANGE, "tensor '%s' has %llu partitions; partition %u requested",
                      ts->cat.name, (unsigned long long)ts->cat.partitions, p);
            result_error(&r->res, EC_ERANGE, ec_last_error());
            break;
        }
        e->st.fault_parts++;
        rc = want_partition(e, ts, p, r);
        if (rc == EC_ENOSPC && room_coming(e))
            rc = defer_partition(e, r, tensor, p);
        if (rc) {
            result_error(&r->res, rc, ec_last_error());
            break;
        }
    }
    request_put(e, r);
    return 0;
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

    ec_u64map_del(&e->inflight, key);
    ts->inflight--;
    if (rc == 0 && ts->retired) {
        rc = EC_ENOENT;
        snprintf(j->req.msg, sizeof(j->req.msg), "the version was retired");
    }
    if (rc)
        snprintf(j->msg, sizeof(j->msg), "tensor '%.64s' (model '%.64s' version %lld): %.300s",
                 j->ts->cat.name, j->ts->cat.model, (long long)j->ts->cat.version, j->req.msg);
    if (rc == 0) {
        e->st.page_ins++;
        e->st.page_in_bytes += j->length;
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
    } else if (ts->retired) {
        /* not an error of the disk: the read lost a race with retire */
    } else {
        e->st.read_errors++;
        ec_error("%s", j->msg);
    }

    if (!group) {
        if (rc == 0) {
            u->ref = true;
            u->expires = expiry_of(e);
            clock_add(e, u);
            account(e, u, +1);
        } else {
            if (published)
                extent_retire(e, u->off, u->bytes);
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
            result_error(&j->waiters[i]->res, rc, j->msg);
        request_put(e, j->waiters[i]);
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
            unit_drop(e, u, false);
            for (; w; w = next) {
                next = w->next;
                result_error(&w->res, st, msg);
                request_finish(e, w);
            }
        } else {
            u->ref = true;
            clock_add(e, u);
            account(e, u, +1);
            for (; w; w = next) {
                next = w->next;
                pin_register(e, w, u, ts);
                request_finish(e, w);
            }
        }
    }
    /* Pins that waited for this tensor's single reads to drain. */
    if (ts->inflight == 0 && ts->pin_waiters) {
        struct request *w = ts->pin_waiters, *next;
        ts->pin_waiters = NULL;
        for (; w; w = next) {
            next = w->next;
            w->next = NULL;
            pin_start(e, w);
        }
    }
}

static void retires_check(ec_engine *e);

static void read_done(ec_page_req *r, void *arg)
{
    job_complete(arg, r->user);
}

void ec_engine_flush(ec_engine *e)
{
    /* Reads waiting for memory in limbo: retry each turn (the server turns
     * every millisecond while they wait; ec_engine_waiting). The tick may
     * have reclaimed the memory already, so retry whether or not this call
     * frees anything: a wait must not depend on who freed the memory. */
    if (e->deferred && ec_devtier_active(e->dt)) {
        reclaim(e);
        retry_deferred(e);
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
        retry_deferred(e);
    if (e->retires)
        retires_check(e);
    gauges(e);
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
        result_error(&r->res, EC_ECONN, "connection closed");
        return;
    }
    p = calloc(1, sizeof(*p));
    if (!p) {
        result_error(&r->res, EC_ENOMEM, "pin");
        return;
    }
    p->id = ++e->next_pin;
    p->tensor = r->tensor;
    p->unit = g;
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
            unit_drop(e, u, false);
        }
    }
}

static void pin_start(ec_engine *e, struct request *r)
{
    struct tstate *ts;
    struct unit *g;
    uint64_t total, off, rpp_bytes;
    int rc;

    rc = tensor_get(e, r->tensor, &ts);
    if (rc == 0 && ts->retired)
        rc = ec_seterr(EC_ENOENT, "model '%s' version %lld is being retired", ts->cat.model,
                       (long long)ts->cat.version);
    if (rc) {
        result_error(&r->res, rc, ec_last_error());
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
        result_error(&r->res, EC_ENOMEM, "group");
        request_finish(e, r);
        return;
    }
    g->tensor = r->tensor;
    g->part = GROUP_PART;
    g->bytes = page_round(total ? total : 1);
    g->clock_pos = SIZE_MAX;
    g->loading = true;
    rc = alloc_evicting(e, g->bytes, &off);
    if (rc) {
        free(g);
        ec_adderr(rc, "cannot pin tensor '%s' (%llu bytes) contiguously", ts->cat.name,
                  (unsigned long long)total);
        result_error(&r->res, rc, ec_last_error());
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
                result_error(&w->res, g->status, g->msg);
            else
                result_error(&w->res, EC_EINVAL, "tensor has no rows to view");
            ts->group = NULL;
            ec_extent_release(e->ext, g->off, g->bytes);
            free(g);
        } else {
            clock_add(e, g);
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

    rc = tensor_get(e, tensor, &ts);
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
    pin_start(e, r);
    return 0;
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
        free(p);
        return 0;
    }
    return ec_seterr(EC_ENOENT, "this connection holds no pin %llu",
                     (unsigned long long)pin_id);
}

int ec_engine_owner_open(ec_engine *e, uint64_t owner)
{
    struct owner *o = calloc(1, sizeof(*o));

    if (!o || ec_u64map_put(&e->owners, owner, o)) {
        free(o);
        return ec_seterr(EC_ENOMEM, "connection table");
    }
    o->id = owner;
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
        free(p);
    }
    free(o);
}

static int cmp_idle(const void *a, const void *b)
{
    const struct vstate *x = *(struct vstate *const *)a, *y = *(struct vstate *const *)b;
    return (x->last_access > y->last_access) - (x->last_access < y->last_access);
}

/* End of a rate window: a version whose request rate stayed under its
 * model's floor is evicted down to its minimum residency, least recently
 * used version first. */
static void sweep_idle(ec_engine *e, double elapsed)
{
    struct vstate **idle = calloc(e->versions.len ? e->versions.len : 1, sizeof(*idle));
    size_t n = 0;

    for (size_t i = 0; idle && i < e->versions.cap; i++) {
        struct vstate *vs = e->versions.vals[i];
        if (!e->versions.keys[i])
            continue;
        if (vs->min_rate > 0 && (double)vs->requests / elapsed < vs->min_rate &&
            vs->resident > vs->min_resident)
            idle[n++] = vs;
        vs->requests = 0;
    }
    qsort(idle, n, sizeof(*idle), cmp_idle);
    for (size_t k = 0; k < n; k++) {
        struct vstate *vs = idle[k];
        uint64_t before = vs->resident;
        for (size_t i = 0; i < e->nclock && vs->resident > vs->min_resident;) {
            struct unit *u = e->clock[i];
            if (vstate_of_tensor(e, u->tensor) == vs && !u->pins && !u->loading &&
                !protected_unit(e, u)) {
                unit_drop(e, u, false); /* the clock slot now holds another unit */
                continue;
            }
            i++;
        }
        if (before > vs->resident) {
            e->st.idle_evictions++;
            e->st.idle_evicted_bytes += before - vs->resident;
            ec_info("%s version %lld is idle (under %.3g requests/s): evicted %llu bytes, "
                    "%llu stay resident", vs->model, (long long)vs->version, vs->min_rate,
                    (unsigned long long)(before - vs->resident),
                    (unsigned long long)vs->resident);
        }
    }
    free(idle);
}

void ec_engine_tick(ec_engine *e)
{
    double now = mono_now(), window = e->cfg.rate_window > 0 ? e->cfg.rate_window : 60;

    expire_some(e);
    reclaim(e);
    if (e->deferred && ec_devtier_active(e->dt))
        retry_deferred(e);
    ec_devtier_tick(e->dt, 0);
    if (now - e->window_start >= window) {
        sweep_idle(e, now - e->window_start);
        e->window_start = now;
    }
    gauges(e);
}

int ec_engine_set_policy(ec_engine *e, const char *model, uint64_t min_resident_bytes,
                         double min_request_rate)
{
    int rc = ec_catalog_set_policy(e->cat, model, min_resident_bytes, min_request_rate);

    if (rc)
        return rc;
    for (size_t i = 0; i < e->versions.cap; i++) {
        struct vstate *vs = e->versions.vals[i];
        if (e->versions.keys[i] && !strcmp(vs->model, model)) {
            vs->min_resident = min_resident_bytes;
            vs->min_rate = min_request_rate;
        }
    }
    ec_info("policy of %s: at least %llu bytes per version stay resident; idle under %.3g "
            "requests/s", model, (unsigned long long)min_resident_bytes, min_request_rate);
    return 0;
}

void ec_engine_touch(ec_engine *e, uint64_t key)
{
    struct unit *u = ec_u64map_get(&e->resident, key);

    if (u) {
        u->ref = true;
        note_request(vstate_of_tensor(e, u->tensor));
        ec_devtier_touch(e->dt, key);
    }
}

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
static void prewarm_report(ec_engine *e, struct request *r)
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
        if (tensor_get(e, tensors[i], &ts) == 0)
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
        int rc = tensor_get(e, pw->tensors[pw->ti], &ts);

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
            pin_start(e, r);
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
        rc = want_partition(e, ts, pw->pi, r);
        if (rc == EC_ENOSPC && room_coming(e))
            rc = defer_partition(e, r, (uint32_t)ts->cat.id, pw->pi);
        if (rc)
            result_error(&r->res, rc, ec_last_error());
        pw->pi++;
        request_put(e, r); /* may report (and pump) right away */
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
            free(pw->tensors);
            free(pw);
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
    for (uint32_t i = 0; i < vi.ntensors; i++) {
        struct tstate *ts;
        if (tensor_get(e, vi.tensors[i], &ts) == 0)
            pw->total += ts->cat.partitions;
        else
            pw->total++;
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
    for (uint64_t p = 0; p < ts->cat.partitions; p++) {
        struct unit *u = ec_u64map_get(&e->resident, EC_INDEX_KEY(ts->cat.id, p));
        if (!u)
            continue;
        if (u->pins || u->loading) {
            (*held)++;
            continue;
        }
        freed += u->bytes;
        unit_drop(e, u, false);
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
    gauges(e);
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
            if (ts) {
                ec_pager_file_del(e->pager, ts->file_slot);
                tstate_free(ts);
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
    gauges(e);
    return rc;
}

static bool retire_drained(ec_engine *e, const struct retire *rt)
{
    for (uint32_t i = 0; i < rt->ntensors; i++) {
        struct tstate *ts = ec_u64map_get(&e->tensors, rt->tensors[i]);
        if (ts && ts->inflight)
            return false;
    }
    return true;
}

static void retires_check(ec_engine *e)
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
    retires_check(e); /* finishes now when nothing is in flight */
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

        rc = tensor_get(e, vi.tensors[i], &ts);
        if (rc == EC_ECORRUPT) {
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
            ts->vs = vstate_get(e, t.version_id, t.model, t.version);
            snprintf(ts->path, sizeof(ts->path), "%s/%s", e->data_dir, t.path);
            if (ec_u64map_put(&e->tensors, vi.tensors[i], ts)) {
                tstate_free(ts);
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
                unit_drop(e, u, false);
        }
        (void)held;
        free(ts->cat.part_checksums);
        ts->cat.part_checksums = sums;
        ts->cat.header_checksum = m.header_checksum;
        ts->cat.file_size = m.file_size;
        ts->meta = m;
        ec_pager_file_del(e->pager, ts->file_slot);
        if (ts->fd >= 0)
            close(ts->fd);
        if (ts->dfd >= 0)
            close(ts->dfd);
        ts->fd = fd;
        ts->dfd = open(ts->path, O_RDONLY | O_DIRECT | O_CLOEXEC);
        ts->file_slot = ec_pager_file_add(e->pager, ts->dfd);
        total += n;
        e->st.refreshed_partitions += n;
    }
    free(vi.tensors);
    gauges(e);
    if (rc == 0) {
        ec_info("refreshed %s version %s: %llu partition(s) changed", model, version,
                (unsigned long long)total);
        *changed = total;
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* Start-up: lock, segment, warm restart                               */

static int lock_data_dir(ec_engine *e)
{
    char path[4200], buf[32];
    int fd;

    snprintf(path, sizeof(path), "%s/embcached.lock", e->data_dir);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return ec_seterr_errno(EC_EIO, errno, "cannot open lock file %s", path);
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        buf[n > 0 ? n : 0] = '\0';
        close(fd);
        return ec_seterr(EC_EBUSY,
                         "data directory %s is in use by another embcached (pid %s); stop it "
                         "first or use another --data-dir",
                         e->data_dir, buf[0] ? strtok(buf, "\n") : "unknown");
    }
    snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
    if (ftruncate(fd, 0) == 0)
        (void)!pwrite(fd, buf, strlen(buf), 0);
    e->lock_fd = fd;
    return 0;
}

struct restart_ctx {
    ec_engine *e;
    uint64_t *keys;
    size_t n, cap;
};

static int collect_entry(uint32_t tensor, uint32_t part, uint64_t off, uint32_t len, void *arg)
{
    struct restart_ctx *c = arg;

    (void)off;
    (void)len;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 1024;
        uint64_t *k = realloc(c->keys, cap * sizeof(*k));
        if (!k)
            return EC_ENOMEM;
        c->keys = k;
        c->cap = cap;
    }
    c->keys[c->n++] = EC_INDEX_KEY(tensor, part);
    return 0;
}

/* Keep what a previous daemon left resident, if it still checks out. */
static int adopt_resident(ec_engine *e)
{
    struct restart_ctx c = {.e = e};
    int rc = ec_index_foreach(&e->seg, collect_entry, &c);

    if (rc) {
        free(c.keys);
        return ec_seterr(rc, "out of memory scanning the index");
    }
    for (size_t i = 0; i < c.n; i++) {
        uint32_t tensor = EC_INDEX_KEY_TENSOR(c.keys[i]), part = EC_INDEX_KEY_PART(c.keys[i]);
        ec_index_ref ref;
        struct tstate *ts = NULL;
        struct unit *u = NULL;
        const char *why = NULL;

        if (!ec_index_lookup(&e->seg, tensor, part, &ref))
            why = "entry out of bounds";
        else if (tensor_get(e, tensor, &ts))
            why = "tensor no longer in the catalog";
        else if (part >= ts->cat.partitions ||
                 ref.length != ec_partfile_part_length(&ts->meta, part))
            why = "partition does not match the catalog";
        else if (ref.offset % EC_SHM_PAGE)
            why = "part of a view placement";
        else if (ec_checksum(e->seg.data + ref.offset, ref.length) !=
                 ts->cat.part_checksums[part])
            why = "checksum mismatch";
        else if (!(u = calloc(1, sizeof(*u))))
            why = "out of memory";
        else if (ec_extent_reserve(e->ext, ref.offset, page_round(ref.length)))
            why = "overlaps another entry";
        if (why) {
            free(u);
            ec_debug("dropping resident partition %u of tensor %u: %s", part, tensor, why);
            ec_index_remove(&e->seg, tensor, part, NULL, NULL);
            e->st.restart_dropped++;
            continue;
        }
        u->tensor = tensor;
        u->part = part;
        u->off = ref.offset;
        u->bytes = page_round(ref.length);
        u->clock_pos = SIZE_MAX;
        u->expires = expiry_of(e);
        if (ec_u64map_put(&e->resident, c.keys[i], u)) {
            ec_extent_release(e->ext, u->off, u->bytes);
            ec_index_remove(&e->seg, tensor, part, NULL, NULL);
            free(u);
            continue;
        }
        clock_add(e, u);
        account(e, u, +1);
        e->st.restart_kept++;
    }
    free(c.keys);
    return 0;
}

/* Re-attach the recorded segment or create one, and bump the generation. */
static int open_segment(ec_engine *e)
{
    int rc = ec_segment_reopen(e->data_dir, &e->seg);

    if (rc == 0 && e->seg.size != e->cfg.shm_size) {
        ec_info("the recorded segment has %zu bytes, %llu were asked for: starting cold",
                e->seg.size, (unsigned long long)e->cfg.shm_size);
        ec_segment_destroy(&e->seg, e->data_dir);
        rc = EC_ENOENT;
    } else if (rc == EC_ECORRUPT || rc == EC_EVERSION) {
        ec_warn("the recorded segment cannot be re-attached (%s): starting cold",
                ec_last_error());
        /* Remove its name; ec_segment_reopen left seg closed. */
        char path[4200];
        snprintf(path, sizeof(path), "%s/%s", e->data_dir, EC_SEGMENT_RECORD);
        unlink(path);
        rc = EC_ENOENT;
    } else if (rc && rc != EC_ENOENT) {
        return rc;
    }
    if (rc == EC_ENOENT) {
        /* A device table per GPU this machine has, even with the tier off
         * now: a restart with --gpu-slab then finds room for it. */
        const ec_backend *b = ec_backend_get(EC_BACKEND_AUTO);
        int gpus = b && b->slab_create ? b->device_count() : 0;
        rc = ec_segment_create_ex(e->data_dir, e->cfg.shm_size,
                                  gpus < 0 ? 0
                                  : (unsigned)gpus > EC_SHM_MAX_DEVICES ? EC_SHM_MAX_DEVICES
                                                                        : (unsigned)gpus,
                                  &e->seg);
        if (rc)
            return rc;
        e->generation = atomic_load(&e->seg.hdr->generation);
    } else {
        e->generation = atomic_load(&e->seg.hdr->generation) + 1;
        ec_info("re-attached segment of %zu bytes (warm restart, generation %llu)",
                e->seg.size, (unsigned long long)e->generation);
    }
    rc = ec_extents_new(e->seg.data_size, &e->ext);
    if (rc)
        return rc;
    /* Bump the generation before anything is served: clients of the previous
     * daemon see it change and reconnect. */
    atomic_store_explicit(&e->seg.hdr->daemon_pid, (uint32_t)getpid(), memory_order_relaxed);
    atomic_store_explicit(&e->seg.hdr->generation, e->generation, memory_order_release);
    return 0;
}

/* Keep what the previous daemon left resident (needs the pager: it opens
 * the tensors' files). */
static int adopt_segment(ec_engine *e)
{
    int rc = adopt_resident(e);

    if (rc == 0 && (e->st.restart_kept || e->st.restart_dropped))
        ec_info("warm restart: kept %llu resident partitions, dropped %llu",
                (unsigned long long)e->st.restart_kept,
                (unsigned long long)e->st.restart_dropped);
    gauges(e);
    return rc;
}

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
    rc = lock_data_dir(e);
    if (rc)
        goto fail;
    snprintf(path, sizeof(path), "%s/%s", e->data_dir, EC_CATALOG_FILE);
    rc = ec_catalog_open(path, &e->cat);
    if (rc)
        goto fail;
    swept = ec_import_sweep(e->cat, e->data_dir);
    if (swept > 0)
        ec_info("removed %d orphaned partition file(s) from an interrupted import", swept);
    place(e);
    rc = open_segment(e);
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
    }
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
    e->budget = cfg->budget && cfg->budget < e->seg.data_size ? cfg->budget : e->seg.data_size;
    srand48((long)getpid() ^ (long)time(NULL));
    rc = adopt_segment(e);
    if (rc)
        goto fail;
    rc = ec_engine_owner_open(e, EC_ENGINE_OWNER_SELF);
    if (rc)
        goto fail;
    {
        ec_devtier_config dc = {.slab_bytes = cfg->gpu_slab};
        e->dt = ec_devtier_open(&e->seg, ec_backend_get(EC_BACKEND_AUTO), &dc, e->generation,
                                e->topo);
    }
    /* A restart with a smaller budget: shed what the old daemon kept. */
    while (used_bytes(e) > e->budget && evict_one(e) == 0)
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
    free(j->waiters);
    free(j);
}

void ec_engine_close(ec_engine *e)
{
    if (!e)
        return;
    /* Reads still in flight write into the segment: the pager waits for
     * them. Their extents stay unpublished; the next daemon rebuilds the
     * allocator from the index alone. */
    if (e->pager)
        ec_pager_close(e->pager, drop_job, NULL);
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
        free(pw->tensors);
        free(pw);
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
            tstate_free(e->tensors.vals[i]);
    ec_u64map_free(&e->tensors);
    for (size_t i = 0; i < e->versions.cap; i++)
        if (e->versions.keys[i])
            free(e->versions.vals[i]);
    ec_u64map_free(&e->versions);
    ec_u64map_free(&e->resident);
    ec_u64map_free(&e->inflight);
    ec_u64map_free(&e->owners);
    ec_extents_free(e->ext);
    if (e->seg.base && e->cfg.drop_segment)
        ec_segment_destroy(&e->seg, e->data_dir);
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
void ec_engine_set_epoch_source(ec_engine *e, uint64_t (*fn)(void *arg), void *arg)
{
    e->min_epoch = fn;
    e->min_epoch_arg = arg;
}
ec_catalog *ec_engine_catalog(ec_engine *e) { return e->cat; }
uint64_t ec_engine_generation(const ec_engine *e) { return e->generation; }
int ec_engine_event_fd(const ec_engine *e) { return ec_pager_event_fd(e->pager); }
const char *ec_engine_pager_name(const ec_engine *e) { return ec_pager_name(e->pager); }

void ec_engine_inject(ec_engine *e, enum ec_fault_kind kind, unsigned every_nth)
{
    ec_pager_inject(e->pager, kind, every_nth);
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
    S("used_bytes", s.used);
    S("pinned_bytes", pinned);
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
    S("resolves", e->st.resolves);
    S("restart_kept_partitions", e->st.restart_kept);
    S("restart_dropped_partitions", e->st.restart_dropped);
    S("models", models);
    S("versions", versions);
    S("tensors", tensors);
#undef S
    return ec_devtier_stats(e->dt, cb, arg);
}
