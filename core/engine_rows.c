/*
 * engine_rows.c - tensors cached by rows: the mode of each tensor, the miss
 * path at 4 KiB-block granularity, admission into the item store, the
 * access history that prewarms a row-cached tensor, and their statistics.
 *
 * A tensor is cached by PARTITIONS (engine_fault.c) or by ROWS. Which one:
 * the catalog's policy when it forces one (`embcache policy --mode`), else
 * the daemon decides when it first opens the tensor: by rows when the
 * tensor is larger than half the budget, or when it does not fit beside
 * the tensors already cached by partitions (together at most 90% of the
 * budget). A decision stays until the policy changes, so a tensor never
 * changes mode on its own under traffic. Rows need a version-2 partition
 * file (per-block checksums), rows of at most ROW_MAX_BYTES and an item
 * index in the segment; without them a tensor is cached by partitions.
 *
 * Misses (ec_engine_fault_rows): each missing row's blocks (usually one)
 * are read with O_DIRECT into the staging area, a reserved extent at the
 * end of the data area, submitted together through the pager; a read of
 * the same blocks already in flight is joined (single flight across
 * clients). A finished read is verified block by block against the
 * partition file's block checksums by the pager; then the requested rows
 * are copied into item slots and published, and the requests answered. A
 * block that fails its checksum is never cached: its waiters get
 * EC_ECHECKSUM.
 *
 * Called by the server loop through engine.h (fault_rows, set_tensor_mode,
 * tensor stats) and by the other engine files through engine_impl.h. Runs
 * on the server thread only.
 */
#include "engine.h"
#include "core/engine_impl.h"
#include "shm/results.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hash.h"
#include "common/log.h"
#include "shm/items.h"

#define BLOCK EC_PARTFILE_ALIGN
#define ROW_MAX_BYTES (60u * 1024u) /* rows up to 16 blocks (17 when straddling) */
#define STAGE_MIN (256u << 10)
#define STAGE_MAX (16u << 20)
#define RUN_KEY(t, b, n) (((uint64_t)(t) << 42) | ((uint64_t)(b) << 6) | (uint64_t)((n) - 1))
#define HOT_MAGIC 0x31544f48504345ULL /* "ECPHOT1" */
#define HOT_VERSION 1u
#define HOT_SAVE_SECONDS 60.0

/* A read of blocks [first, first + n) of a tensor's file and the rows it
 * brings. */
struct rowjob {
    uint64_t key;                /* RUN_KEY, in e->row_inflight */
    struct tstate *ts;
    uint64_t first;
    uint32_t nblocks;
    uint64_t stage;              /* from the data area; UINT64_MAX: waiting for room */
    enum ec_page_prio prio;
    uint64_t *rows;
    size_t nrows, caprows;
    struct request **waiters;
    size_t nwaiters, capwaiters;
    ec_page_req req;
    struct rowjob *next;         /* in the staging wait queue */
};

/* The header of a tensor's access history, <data_dir>/hot/<tensor>.hot,
 * followed by `count` row ids, hottest first. */
struct hot_header {
    uint64_t magic;
    uint32_t version;
    uint32_t tensor;
    uint64_t header_checksum;    /* of the partition file it describes */
    uint64_t rows;               /* the tensor's rows, for validation */
    uint64_t count;
    uint64_t ids_checksum;       /* XXH3-64 of the ids */
    uint64_t reserved[2];
};

static_assert(sizeof(struct hot_header) == 64, "history header size");

/* ------------------------------------------------------------------ */
/* Modes                                                               */

const char *eng_mode_name(ec_cache_mode m)
{
    return m == EC_CACHE_ROWS ? "rows" : m == EC_CACHE_PARTITIONS ? "partitions" : "auto";
}

/* Can ts be cached by rows at all? NULL, or why not. */
static const char *rows_refused(const ec_engine *e, const struct tstate *ts)
{
    if (!e->items)
        return "the segment has no item index (embcached --item-bytes 0)";
    if (ts->meta.version < 2 || !ts->block_sums)
        return "its partition file is format version 1, without block checksums (run "
               "`embcache upgrade` on the version)";
    if (ts->cat.row_bytes == 0 || ts->cat.row_bytes > ROW_MAX_BYTES)
        return "its rows are larger than 60 KiB (partitions are as good for them)";
    if (ts->cat.id > EC_ITEM_ROW_TENSOR_MAX || ts->cat.rows - 1 > EC_ITEM_ROW_MAX ||
        ts->meta.blocks >= (1ull << 36))
        return "it is too large for the item keys";
    return NULL;
}

static uint64_t tensor_bytes(const struct tstate *ts)
{
    return ts->cat.rows * ts->cat.row_bytes;
}

/* The mode the policy and the sizes give ts now. */
static ec_cache_mode mode_for(const ec_engine *e, const struct tstate *ts)
{
    const char *why = rows_refused(e, ts);
    uint64_t bytes = tensor_bytes(ts);
    /* The others cached by partitions (ts itself is counted while it is). */
    uint64_t others = e->part_mode_bytes -
                      (ts->mode == EC_CACHE_PARTITIONS && bytes <= e->part_mode_bytes ? bytes : 0);

    /* Pinned whole (a view, a pinned prewarm): its partitions are all in. */
    if (ts->policy == EC_CACHE_PARTITIONS || why || ts->group)
        return EC_CACHE_PARTITIONS;
    if (ts->policy == EC_CACHE_ROWS)
        return EC_CACHE_ROWS;
    if (bytes > e->budget / 2 || others + bytes > e->budget / 10 * 9)
        return EC_CACHE_ROWS;
    return EC_CACHE_PARTITIONS;
}

static void set_mode(ec_engine *e, struct tstate *ts, ec_cache_mode m)
{
    if (ts->mode == EC_CACHE_PARTITIONS)
        e->part_mode_bytes -= tensor_bytes(ts) < e->part_mode_bytes ? tensor_bytes(ts)
                                                                    : e->part_mode_bytes;
    ts->mode = m;
    if (m == EC_CACHE_PARTITIONS)
        e->part_mode_bytes += tensor_bytes(ts);
}

/* Read ts's block checksums (v2 files); without them it is cached by
 * partitions. */
static int load_block_sums(struct tstate *ts)
{
    free(ts->block_sums);
    ts->block_sums = NULL;
    if (ts->meta.version >= 2 && ts->meta.blocks && ts->cat.row_bytes <= ROW_MAX_BYTES) {
        ts->block_sums = malloc(ts->meta.blocks * sizeof(uint64_t));
        if (!ts->block_sums)
            return ec_seterr(EC_ENOMEM, "block checksums of tensor '%s' (%llu blocks)",
                             ts->cat.name, (unsigned long long)ts->meta.blocks);
        if (ec_partfile_read_block_sums(ts->fd, &ts->meta, ts->block_sums)) {
            ec_warn("tensor '%s' of model '%s' version %lld: %s; it is cached by partitions",
                    ts->cat.name, ts->cat.model, (long long)ts->cat.version, ec_last_error());
            free(ts->block_sums);
            ts->block_sums = NULL;
        }
    }
    return 0;
}

int eng_rows_decide(ec_engine *e, struct tstate *ts)
{
    const char *why;
    ec_cache_mode policy = EC_CACHE_AUTO;
    int rc;

    ts->mode = EC_CACHE_AUTO; /* counted by set_mode below */
    if ((rc = load_block_sums(ts)))
        return rc;
    if (ec_catalog_get_tensor_mode(e->cat, ts->cat.version_id, ts->cat.name, &policy))
        ec_warn("no cache-mode policy for tensor '%s': %s", ts->cat.name, ec_last_error());
    ts->policy = policy;
    set_mode(e, ts, mode_for(e, ts));
    why = rows_refused(e, ts);
    if (ts->policy == EC_CACHE_ROWS && why)
        ec_warn("tensor '%s' of model '%s' version %lld cannot be cached by rows as its policy "
                "asks: %s", ts->cat.name, ts->cat.model, (long long)ts->cat.version, why);
    ec_debug("tensor '%s' of model '%s' version %lld (%llu bytes) is cached by %s",
             ts->cat.name, ts->cat.model, (long long)ts->cat.version,
             (unsigned long long)tensor_bytes(ts), eng_mode_name(ts->mode));
    return 0;
}

static bool key_of_tensor(uint64_t key, void *arg)
{
    return EC_ITEM_KEY_KIND(key) == EC_ITEM_KIND_ROW &&
           EC_ITEM_KEY_TENSOR(key) == *(const uint32_t *)arg;
}

void eng_rows_reload(ec_engine *e, struct tstate *ts)
{
    uint32_t id = (uint32_t)ts->cat.id;

    if (e->items)
        ec_items_drop(e->items, key_of_tensor, &id);
    if (load_block_sums(ts) && ts->mode == EC_CACHE_ROWS)
        set_mode(e, ts, EC_CACHE_PARTITIONS);
    /* What kept it from rows may be gone (an upgraded file), or have come. */
    if (ts->mode == EC_CACHE_AUTO)
        set_mode(e, ts, mode_for(e, ts));
    else
        eng_rows_switch(e, ts, mode_for(e, ts));
}

void eng_rows_forget(ec_engine *e, struct tstate *ts)
{
    if (ts->mode == EC_CACHE_PARTITIONS)
        set_mode(e, ts, EC_CACHE_AUTO);
    free(ts->block_sums);
    ts->block_sums = NULL;
}

uint64_t eng_rows_drop_tensor(ec_engine *e, struct tstate *ts)
{
    uint32_t id = (uint32_t)ts->cat.id;
    uint64_t n;

    if (!e->items || !ts->rst.items)
        return 0;
    n = ec_items_drop(e->items, key_of_tensor, &id);
    return n * ((ts->cat.row_bytes + 15) / 8 * 8);
}

/* Move ts to mode m. Lossless for readers: what the old mode holds is
 * dropped (a reader with the old mode misses, asks the daemon and is told
 * the new mode), reads in flight finish and are not cached. */
void eng_rows_switch(ec_engine *e, struct tstate *ts, ec_cache_mode m)
{
    ec_cache_mode old = ts->mode;

    if (m == old)
        return;
    set_mode(e, ts, m);
    e->rst.mode_switches++;
    if (old == EC_CACHE_ROWS) {
        eng_rows_drop_tensor(e, ts);
    } else {
        for (uint64_t p = 0; p < ts->cat.partitions; p++) {
            struct unit *u = ec_u64map_get(&e->resident, EC_INDEX_KEY(ts->cat.id, p));
            if (u && u->part != GROUP_PART && u->pins == 0 && !u->loading)
                eng_unit_drop(e, u, false);
        }
    }
    ec_info("tensor '%s' of model '%s' version %lld is now cached by %s", ts->cat.name,
            ts->cat.model, (long long)ts->cat.version, eng_mode_name(m));
}

int ec_engine_set_tensor_mode(ec_engine *e, const char *model, const char *tensor,
                              ec_cache_mode mode)
{
    int rc = ec_catalog_set_tensor_mode(e->cat, model, tensor, mode);

    if (rc)
        return rc;
    for (size_t i = 0; i < e->tensors.cap; i++) {
        struct tstate *ts = e->tensors.vals[i];
        ec_cache_mode policy = EC_CACHE_AUTO;

        if (!e->tensors.keys[i] || strcmp(ts->cat.model, model) || ts->retired)
            continue;
        if (ec_catalog_get_tensor_mode(e->cat, ts->cat.version_id, ts->cat.name, &policy))
            continue;
        ts->policy = policy;
        eng_rows_switch(e, ts, mode_for(e, ts));
    }
    ec_info("policy of %s%s%s: cached by %s", model, tensor && *tensor ? " tensor " : "",
            tensor && *tensor ? tensor : "", eng_mode_name(mode));
    return 0;
}

/* ------------------------------------------------------------------ */
/* Staging and the item store's memory                                 */

static int slab_alloc(void *arg, bool may_evict, uint64_t *off)
{
    ec_engine *e = arg;

    for (int tries = 0; tries < 2; tries++) {
        if (eng_used_bytes(e) + EC_SLAB_BYTES <= e->budget &&
            ec_extent_alloc_aligned(e->ext, EC_SLAB_BYTES, EC_SLAB_BYTES, off) == 0)
            return 0;
        /* A cold partition gives way (CLOCK), at the pace the store asks. */
        if (!may_evict || eng_evict_one(e))
            break;
    }
    return EC_ENOSPC;
}

static void slab_free(void *arg, uint64_t off)
{
    ec_engine *e = arg;
    int rc = ec_extent_release(e->ext, off, EC_SLAB_BYTES);

    assert(rc == 0);
    (void)rc;
}

static int slab_reserve(void *arg, uint64_t off)
{
    ec_engine *e = arg;

    return ec_extent_reserve(e->ext, off, EC_SLAB_BYTES);
}

/* May a restarted daemon keep an item it finds in the segment? */
static bool item_valid(void *arg, uint64_t key, uint64_t value_bytes)
{
    ec_engine *e = arg;
    struct tstate *ts;

    /* Results: the cache manager checks their namespaces when it opens. */
    if (EC_ITEM_KEY_KIND(key) == EC_ITEM_KIND_RESULT)
        return value_bytes >= sizeof(ec_result_hdr);
    if (EC_ITEM_KEY_KIND(key) != EC_ITEM_KIND_ROW ||
        eng_tensor_get(e, EC_ITEM_KEY_TENSOR(key), &ts) || ts->retired ||
        rows_refused(e, ts) || ts->policy == EC_CACHE_PARTITIONS ||
        ts->cat.row_bytes != value_bytes || EC_ITEM_KEY_ROW(key) >= ts->cat.rows)
        return false;
    /* Rows of it survived: it stays cached by rows. */
    if (ts->mode != EC_CACHE_ROWS)
        set_mode(e, ts, EC_CACHE_ROWS);
    ts->rst.items++;
    return true;
}

static void item_evicted(void *arg, uint64_t key, uint64_t value_bytes)
{
    ec_engine *e = arg;
    struct tstate *ts;

    if (EC_ITEM_KEY_KIND(key) == EC_ITEM_KIND_RESULT) {
        if (e->result_unpublished)
            e->result_unpublished(e->result_arg, key, value_bytes);
        return;
    }
    if (EC_ITEM_KEY_KIND(key) != EC_ITEM_KIND_ROW)
        return;
    ts = ec_u64map_get(&e->tensors, EC_ITEM_KEY_TENSOR(key));
    if (ts && ts->rst.items)
        ts->rst.items--;
}

int eng_rows_open(ec_engine *e)
{
    ec_itemstore_env env = {.slab_alloc = slab_alloc, .slab_free = slab_free,
                            .valid = item_valid, .evicted = item_evicted, .arg = e};
    uint64_t want = e->seg.data_size / 16;
    int rc;

    e->stage_tail = &e->stage_wait;
    if (!e->seg.item_buckets)
        return 0;
    if (want < STAGE_MIN)
        want = STAGE_MIN;
    if (want > STAGE_MAX)
        want = STAGE_MAX;
    want = want / (64u << 10) * (64u << 10);
    if (want * 4 > e->seg.data_size) {
        ec_warn("the segment's data area (%llu bytes) is too small to cache rows: tensors "
                "are cached by partitions", (unsigned long long)e->seg.data_size);
        return 0;
    }
    e->staging_bytes = want;
    e->staging_off = (e->seg.data_size - want) / BLOCK * BLOCK;
    rc = ec_extent_reserve(e->ext, e->staging_off, e->staging_bytes);
    if (rc == 0)
        rc = ec_extents_new(e->staging_bytes, &e->staging);
    if (rc == 0)
        rc = ec_items_open(&e->seg, &env, &e->items);
    return rc;
}

int eng_rows_adopt(ec_engine *e)
{
    return e->items ? ec_items_adopt(e->items, slab_reserve, e) : 0;
}

/* ------------------------------------------------------------------ */
/* The miss path                                                       */

static int grow(void **v, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return 0;
    {
        size_t c = *cap ? *cap * 2 : 8;
        void *p = realloc(*v, c * size);
        if (!p)
            return ec_seterr(EC_ENOMEM, "row read");
        *v = p;
        *cap = c;
    }
    return 0;
}

static void row_submit(ec_engine *e, struct rowjob *j)
{
    struct tstate *ts = j->ts;
    ec_page_req *r = &j->req;

    memset(r, 0, sizeof(*r));
    r->fd = ts->fd;
    r->dfd = ts->dfd;
    r->file_slot = ts->file_slot;
    r->path = ts->path;
    r->file_off = ec_partfile_block_offset(&ts->meta, j->first);
    r->length = j->nblocks * BLOCK;
    r->io_len = r->length;
    r->direct_ok = true;
    r->dest = e->seg.data + j->stage;
    r->block_sums = ts->block_sums + j->first;
    r->block = j->first;
    r->part = (uint32_t)((j->first * BLOCK) / (ts->meta.stride ? ts->meta.stride : 1));
    r->prio = j->prio;
    r->user = j;
    eng_remote_blocks(e, ts, j->first, j->nblocks, r);
    ec_pager_submit(e->pager, r);
    e->rst.block_reads++;
    e->rst.block_bytes += r->length;
}

/* Give j room in the staging area and start its read, or queue it. */
static void row_start(ec_engine *e, struct rowjob *j)
{
    uint64_t rel;

    if (ec_extent_alloc(e->staging, (uint64_t)j->nblocks * BLOCK, &rel) == 0) {
        j->stage = e->staging_off + rel;
        row_submit(e, j);
        return;
    }
    j->stage = UINT64_MAX;
    j->next = NULL;
    *e->stage_tail = j;
    e->stage_tail = &j->next;
    e->rst.stage_waits++;
}

static int job_add(struct rowjob *j, uint64_t row, struct request *r)
{
    if (grow((void **)&j->rows, &j->caprows, j->nrows, sizeof(*j->rows)))
        return EC_ENOMEM;
    j->rows[j->nrows++] = row;
    if (j->nwaiters && j->waiters[j->nwaiters - 1] == r)
        return 0;
    if (grow((void **)&j->waiters, &j->capwaiters, j->nwaiters, sizeof(*j->waiters))) {
        j->nrows--;
        return EC_ENOMEM;
    }
    j->waiters[j->nwaiters++] = r;
    r->pending++;
    return 0;
}

int eng_rows_want(ec_engine *e, struct tstate *ts, const uint64_t *ids, size_t n,
                  struct request *r)
{
    uint32_t tensor = (uint32_t)ts->cat.id;
    uint64_t rb = ts->cat.row_bytes;

    if (ts->retired)
        return ec_seterr(EC_ENOENT, "model '%s' version %lld is being retired; resolve the "
                                    "tensor again", ts->cat.model, (long long)ts->cat.version);
    for (size_t i = 0; i < n; i++) {
        uint64_t first, key;
        uint32_t nb;
        struct rowjob *j;

        if (ids[i] >= ts->cat.rows)
            return ec_seterr(EC_ERANGE, "tensor '%s' has %llu rows; row %llu requested",
                             ts->cat.name, (unsigned long long)ts->cat.rows,
                             (unsigned long long)ids[i]);
        e->rst.row_faults++;
        ts->rst.row_faults++;
        if (ec_items_has(e->items, EC_ITEM_ROW_KEY(tensor, ids[i]), rb))
            continue;
        if (ec_partfile_row_blocks(&ts->meta, ids[i], &first, &nb) || nb == 0 || nb > 64)
            return ec_seterr(EC_EINTERNAL, "row %llu of tensor '%s' maps to no blocks",
                             (unsigned long long)ids[i], ts->cat.name);
        key = RUN_KEY(tensor, first, nb);
        if ((j = ec_u64map_get(&e->row_inflight, key))) {
            e->rst.row_coalesced++;
        } else {
            j = calloc(1, sizeof(*j));
            if (!j || ec_u64map_put(&e->row_inflight, key, j)) {
                free(j);
                return ec_seterr(EC_ENOMEM, "row read");
            }
            j->key = key;
            j->ts = ts;
            j->first = first;
            j->nblocks = nb;
            j->prio = r->kind == REQ_PREWARM ? EC_PAGE_PREWARM : EC_PAGE_DEMAND;
            ts->row_jobs++;
            row_start(e, j);
        }
        if (job_add(j, ids[i], r))
            return EC_ENOMEM;
    }
    return 0;
}

int ec_engine_fault_rows(ec_engine *e, uint64_t owner, uint64_t token, uint32_t tensor,
                         const uint64_t *ids, uint32_t n)
{
    struct tstate *ts;
    struct request *r;
    int rc;

    rc = eng_tensor_get(e, tensor, &ts);
    if (rc)
        return rc;
    if (ts->mode != EC_CACHE_ROWS) {
        /* Cached by partitions: the partitions of these rows, once each. */
        uint32_t *parts = malloc((n ? n : 1) * sizeof(*parts)), np = 0;
        if (!parts)
            return ec_seterr(EC_ENOMEM, "fault request");
        for (uint32_t i = 0; i < n; i++) {
            uint64_t p = ids[i] / ts->cat.rows_per_partition;
            if (ids[i] >= ts->cat.rows)
                p = ts->cat.partitions; /* ec_engine_fault reports it */
            if (np == 0 || parts[np - 1] != p)
                parts[np++] = p > UINT32_MAX ? UINT32_MAX : (uint32_t)p;
        }
        rc = ec_engine_fault(e, owner, token, tensor, parts, np);
        free(parts);
        return rc;
    }
    r = calloc(1, sizeof(*r));
    if (!r)
        return ec_seterr(EC_ENOMEM, "fault request");
    r->kind = REQ_FAULT;
    r->owner = owner;
    r->token = token;
    r->tensor = tensor;
    r->start_ns = ec_hist_now_ns();
    r->pending = 1;
    e->st.fault_requests++;
    eng_note_request(ts->vs);
    rc = eng_rows_want(e, ts, ids, n, r);
    if (rc)
        eng_result_error(&r->res, rc, ec_last_error());
    eng_request_put(e, r);
    return 0;
}

/* Copy j's rows from the staging area into item slots and publish them.
 * 0, or the error that stopped it (the budget, when nothing can go). */
static int admit(ec_engine *e, struct rowjob *j)
{
    struct tstate *ts = j->ts;
    uint32_t tensor = (uint32_t)ts->cat.id;
    uint64_t rb = ts->cat.row_bytes, base = ec_partfile_block_offset(&ts->meta, j->first);
    const uint8_t *stage = e->seg.data + j->stage;

    for (size_t i = 0; i < j->nrows; i++) {
        uint64_t key = EC_ITEM_ROW_KEY(tensor, j->rows[i]), off, at;
        int rc;

        if (ec_items_has(e->items, key, rb))
            continue; /* a duplicate id, or another read brought it */
        at = ec_partfile_row_offset(&ts->meta, j->rows[i]) - base;
        assert(at + rb <= (uint64_t)j->nblocks * BLOCK);
        rc = ec_items_reserve(e->items, rb, &off);
        if (rc)
            return rc;
        memcpy(e->seg.data + off, &key, 8);
        memcpy(e->seg.data + off + 8, stage + at, rb);
        rc = ec_items_publish(e->items, key, off);
        if (rc)
            return rc;
        ts->rst.items++;
        ts->rst.rows_admitted++;
        e->rst.rows_admitted++;
    }
    return 0;
}

void eng_rows_read_done(ec_engine *e, ec_page_req *req)
{
    struct rowjob *j = req->user, *w;
    struct tstate *ts = j->ts;
    char msg[EC_ERRMSG_MAX];
    int rc = req->rc;

    eng_remote_done(e, ts, req);
    if (eng_remote_retry(e, ts, req)) {
        e->rst.block_reads--; /* row_submit counts it again */
        e->rst.block_bytes -= req->length;
        row_submit(e, j);
        return;
    }
    ec_u64map_del(&e->row_inflight, j->key);
    ts->row_jobs--;
    msg[0] = '\0';
    if (rc == 0) {
        ts->rst.bytes_read += req->length;
        if (ts->retired) {
            rc = EC_ENOENT;
            snprintf(msg, sizeof(msg), "model '%.64s' version %lld was retired",
                     ts->cat.model, (long long)ts->cat.version);
        } else if (ts->mode == EC_CACHE_ROWS && (rc = admit(e, j)) != 0) {
            snprintf(msg, sizeof(msg), "tensor '%.64s': %.400s", ts->cat.name,
                     ec_last_error());
        }
        /* Switched to partitions meanwhile: nothing to cache, the waiters
         * are told the new mode and read partitions. */
    } else {
        snprintf(msg, sizeof(msg), "tensor '%.64s' (model '%.64s' version %lld): %.300s",
                 ts->cat.name, ts->cat.model, (long long)ts->cat.version, req->msg);
        if (rc == EC_ECHECKSUM)
            e->st.checksum_failures++;
        else if (rc != EC_ECONN)
            e->st.read_errors++;
        if (rc != EC_ECONN)
            ec_error("%s", msg);
    }
    ec_extent_release(e->staging, j->stage - e->staging_off, (uint64_t)j->nblocks * BLOCK);
    for (size_t i = 0; i < j->nwaiters; i++) {
        if (rc)
            eng_result_error(&j->waiters[i]->res, rc, msg);
        eng_request_put(e, j->waiters[i]);
    }
    free(j->rows);
    free(j->waiters);
    free(j);
    /* Room in the staging area: start what waited for it, in order. */
    while ((w = e->stage_wait)) {
        uint64_t rel;
        if (ec_extent_alloc(e->staging, (uint64_t)w->nblocks * BLOCK, &rel))
            break;
        e->stage_wait = w->next;
        if (!e->stage_wait)
            e->stage_tail = &e->stage_wait;
        w->stage = e->staging_off + rel;
        row_submit(e, w);
    }
}

/* The pager is closing: a row read it hands back is freed here. */
void eng_rows_drop_job(ec_page_req *req)
{
    struct rowjob *j = req->user;

    free(j->rows);
    free(j->waiters);
    free(j);
}

void eng_rows_close(ec_engine *e)
{
    eng_rows_save_history(e, true);
    for (struct rowjob *j = e->stage_wait, *n; j; j = n) {
        n = j->next;
        free(j->rows);
        free(j->waiters);
        free(j);
    }
    e->stage_wait = NULL;
    ec_items_close(e->items);
    e->items = NULL;
    ec_extents_free(e->staging);
    e->staging = NULL;
    ec_u64map_free(&e->row_inflight);
}

void eng_rows_touch(ec_engine *e, uint64_t hint)
{
    if (e->items)
        ec_items_hint(e->items, hint);
}

/* ------------------------------------------------------------------ */
/* Access history: which rows were hot, for prewarming after a restart */

struct hot_entry {
    uint64_t row;
    uint32_t score;
};

struct hot_set {
    uint32_t tensor;
    struct hot_entry *v;
    size_t n, cap;
};

struct hot_all {
    ec_u64map sets; /* tensor -> struct hot_set */
    bool oom;
};

static void hot_collect(uint64_t key, unsigned freq, bool main, void *arg)
{
    struct hot_all *a = arg;
    struct hot_set *s;
    uint32_t t;

    if (EC_ITEM_KEY_KIND(key) != EC_ITEM_KIND_ROW || a->oom)
        return;
    t = EC_ITEM_KEY_TENSOR(key);
    s = ec_u64map_get(&a->sets, t);
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s || ec_u64map_put(&a->sets, t, s)) {
            free(s);
            a->oom = true;
            return;
        }
        s->tensor = t;
    }
    if (grow((void **)&s->v, &s->cap, s->n, sizeof(*s->v))) {
        a->oom = true;
        return;
    }
    s->v[s->n].row = EC_ITEM_KEY_ROW(key);
    s->v[s->n++].score = (main ? 4u : 0u) + freq;
}

static int cmp_hot(const void *x, const void *y)
{
    const struct hot_entry *a = x, *b = y;
    if (a->score != b->score)
        return a->score < b->score ? 1 : -1;
    return (a->row > b->row) - (a->row < b->row);
}

static void hot_path(const ec_engine *e, uint32_t tensor, const char *suffix, char *buf,
                     size_t len)
{
    snprintf(buf, len, "%s/hot/%u.hot%s", e->data_dir, tensor, suffix);
}

static int hot_write(ec_engine *e, const struct tstate *ts, struct hot_set *s)
{
    char tmp[4200], fin[4200];
    struct hot_header h = {.magic = HOT_MAGIC, .version = HOT_VERSION};
    uint64_t *ids = malloc((s->n ? s->n : 1) * sizeof(*ids));
    int fd = -1, rc = 0;
    size_t len;

    if (!ids)
        return ec_seterr(EC_ENOMEM, "access history");
    qsort(s->v, s->n, sizeof(*s->v), cmp_hot);
    for (size_t i = 0; i < s->n; i++)
        ids[i] = s->v[i].row;
    h.tensor = s->tensor;
    h.header_checksum = ts->cat.header_checksum;
    h.rows = ts->cat.rows;
    h.count = s->n;
    h.ids_checksum = ec_checksum(ids, s->n * sizeof(*ids));
    hot_path(e, s->tensor, ".tmp", tmp, sizeof(tmp));
    hot_path(e, s->tensor, "", fin, sizeof(fin));
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    len = s->n * sizeof(*ids);
    if (fd < 0 || write(fd, &h, sizeof(h)) != (ssize_t)sizeof(h) ||
        (len && write(fd, ids, len) != (ssize_t)len) || fsync(fd) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot write the access history %s", tmp);
        if (fd >= 0)
            unlink(tmp);
    } else if (rename(tmp, fin) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "cannot rename %s", tmp);
        unlink(tmp);
    }
    if (fd >= 0)
        close(fd);
    free(ids);
    return rc;
}

void eng_rows_save_history(ec_engine *e, bool force)
{
    struct hot_all a = {0};
    char dir[4200];

    if (!e->items || (!force && mono_now() - e->hot_saved < HOT_SAVE_SECONDS))
        return;
    if (e->rst.rows_admitted == e->hot_saved_admitted && !force)
        return;
    e->hot_saved = mono_now();
    e->hot_saved_admitted = e->rst.rows_admitted;
    ec_items_foreach(e->items, hot_collect, &a);
    snprintf(dir, sizeof(dir), "%s/hot", e->data_dir);
    if (a.sets.len && mkdir(dir, 0700) < 0 && errno != EEXIST)
        ec_warn("cannot create %s: %s", dir, strerror(errno));
    for (size_t i = 0; i < a.sets.cap; i++) {
        struct hot_set *s = a.sets.vals[i];
        struct tstate *ts;
        if (!a.sets.keys[i])
            continue;
        ts = ec_u64map_get(&e->tensors, s->tensor);
        if (ts && !ts->retired && !a.oom && hot_write(e, ts, s))
            ec_warn("%s", ec_last_error());
        free(s->v);
        free(s);
    }
    ec_u64map_free(&a.sets);
    if (a.oom)
        ec_warn("access history not saved: out of memory");
}

int eng_rows_hot_load(ec_engine *e, const struct tstate *ts, uint64_t max, uint64_t **ids_out,
                      uint64_t *n_out)
{
    char path[4200];
    struct hot_header h;
    uint64_t *ids = NULL;
    int fd, rc = 0;

    *ids_out = NULL;
    *n_out = 0;
    hot_path(e, (uint32_t)ts->cat.id, "", path, sizeof(path));
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return 0; /* no history yet: nothing to prewarm */
    if (read(fd, &h, sizeof(h)) != (ssize_t)sizeof(h) || h.magic != HOT_MAGIC ||
        h.version != HOT_VERSION || h.tensor != ts->cat.id ||
        h.header_checksum != ts->cat.header_checksum || h.rows != ts->cat.rows ||
        h.count > ts->cat.rows) {
        rc = ec_seterr(EC_ECORRUPT, "access history %s does not describe tensor '%s' as it is "
                                    "now; it is ignored (it is rewritten within a minute of "
                                    "traffic)", path, ts->cat.name);
        goto out;
    }
    ids = malloc((h.count ? h.count : 1) * sizeof(*ids));
    if (!ids) {
        rc = ec_seterr(EC_ENOMEM, "access history of %llu rows", (unsigned long long)h.count);
        goto out;
    }
    if (h.count && read(fd, ids, h.count * sizeof(*ids)) != (ssize_t)(h.count * sizeof(*ids))) {
        rc = ec_seterr(EC_ECORRUPT, "access history %s is truncated; it is ignored", path);
        goto out;
    }
    if (ec_checksum(ids, h.count * sizeof(*ids)) != h.ids_checksum) {
        rc = ec_seterr(EC_ECORRUPT, "access history %s failed its checksum; it is ignored",
                       path);
        goto out;
    }
    for (uint64_t i = 0; i < h.count; i++)
        if (ids[i] >= ts->cat.rows) {
            rc = ec_seterr(EC_ECORRUPT, "access history %s names row %llu of a %llu-row "
                                        "tensor; it is ignored", path,
                           (unsigned long long)ids[i], (unsigned long long)ts->cat.rows);
            goto out;
        }
    *ids_out = ids;
    *n_out = h.count < max ? h.count : max;
    ids = NULL;
out:
    free(ids);
    close(fd);
    return rc;
}

/* How many rows of ts the cache can hold: its share when it is alone. */
uint64_t eng_rows_capacity(const ec_engine *e, const struct tstate *ts)
{
    uint64_t item = (ts->cat.row_bytes + 15) / 8 * 8;
    uint64_t room = e->budget > e->part_mode_bytes ? e->budget - e->part_mode_bytes : 0;

    return room / item / 10 * 9;
}

/* ------------------------------------------------------------------ */
/* Statistics                                                          */

int eng_rows_stats(ec_engine *e, int (*cb)(const char *name, uint64_t v, void *arg), void *arg)
{
    ec_itemstore_stats s = {0};
    uint64_t rows_tensors = 0;
    int rc;

    if (e->items)
        ec_items_stats(e->items, &s);
    for (size_t i = 0; i < e->tensors.cap; i++)
        if (e->tensors.keys[i] &&
            ((struct tstate *)e->tensors.vals[i])->mode == EC_CACHE_ROWS)
            rows_tensors++;
#define S(name, v)                                     \
    do {                                               \
        if ((rc = cb(name, (uint64_t)(v), arg)) != 0)  \
            return rc;                                 \
    } while (0)
    S("row_tensors", rows_tensors);
    S("row_items", s.items);
    S("row_item_bytes", s.bytes);
    S("row_slabs", s.slabs);
    S("row_item_index_buckets", e->seg.item_buckets);
    S("row_item_index_bytes", e->seg.item_buckets * sizeof(ec_item_bucket));
    S("row_faults", e->rst.row_faults);
    S("row_fault_coalesced", e->rst.row_coalesced);
    S("row_block_reads", e->rst.block_reads);
    S("row_block_bytes", e->rst.block_bytes);
    S("row_admitted", s.admitted);
    S("row_evicted", s.evicted);
    S("row_ghost_hits", s.ghost_hits);
    S("row_promoted", s.promoted);
    S("row_neighbour_evictions", s.neighbour_evictions);
    S("row_hints", s.hints);
    S("row_hints_stale", s.hints_bad);
    S("row_restart_kept", s.adopted);
    S("row_restart_dropped", s.adopt_dropped);
    S("row_value_bytes", s.value_bytes);
    S("row_heap_bytes", s.heap_bytes);
    /* What caching rows costs beyond their values, per million bytes of them:
     * the index (the item index, sized for the whole segment, and the 8-byte
     * key of each item), and that plus the daemon's own state (S3-FIFO's
     * queue and ghost, free lists, per-item metadata). */
    {
        uint64_t index = e->seg.item_buckets * sizeof(ec_item_bucket) + s.items * 8;
        S("row_index_ppm", s.value_bytes ? index * 1000000 / s.value_bytes : 0);
        S("row_overhead_ppm",
          s.value_bytes ? (index + s.heap_bytes) * 1000000 / s.value_bytes : 0);
    }
    S("row_staging_bytes", e->staging_bytes);
    S("row_staging_waits", e->rst.stage_waits);
    S("mode_switches", e->rst.mode_switches);
#undef S
    return 0;
}

int ec_engine_tensor_stats(ec_engine *e, ec_engine_tensor_fn fn, void *arg)
{
    for (size_t i = 0; i < e->tensors.cap; i++) {
        struct tstate *ts = e->tensors.vals[i];
        ec_engine_tensor_stat t;
        int rc;

        if (!e->tensors.keys[i])
            continue;
        memset(&t, 0, sizeof(t));
        t.id = (uint32_t)ts->cat.id;
        t.model = ts->cat.model;
        t.version = ts->cat.version;
        t.name = ts->cat.name;
        t.mode = ts->mode;
        t.policy = ts->policy;
        t.bytes = tensor_bytes(ts);
        t.row_bytes = ts->cat.row_bytes;
        t.file_version = ts->meta.version;
        if (ts->mode == EC_CACHE_ROWS) {
            t.resident_bytes = ts->rst.items * ((ts->cat.row_bytes + 15) / 8 * 8);
            t.resident_rows = ts->rst.items;
        } else {
            for (uint64_t p = 0; p < ts->cat.partitions; p++) {
                struct unit *u = ec_u64map_get(&e->resident, EC_INDEX_KEY(ts->cat.id, p));
                if (u && u->part != GROUP_PART)
                    t.resident_bytes += u->bytes;
            }
            if (ts->group && !ts->group->loading)
                t.resident_bytes = ts->group->bytes;
            t.resident_rows = ts->cat.row_bytes ? t.resident_bytes / ts->cat.row_bytes : 0;
            if (t.resident_rows > ts->cat.rows)
                t.resident_rows = ts->cat.rows;
        }
        t.row_faults = ts->rst.row_faults;
        t.bytes_read = ts->rst.bytes_read;
        t.rows_admitted = ts->rst.rows_admitted;
        rc = fn(&t, arg);
        if (rc)
            return rc;
    }
    return 0;
}
