/*
 * dyntable.c - the daemon's dynamic tables (the contract is in dyntable.h):
 * loading a table from its base rows and the log, applying updates, the
 * free-slot FIFO and the least-recently-written order. The snapshot is in
 * dyntable_snap.c.
 *
 * Invariants (per table; asserted where cheap):
 *  1. live <= capacity; every live key has exactly one word, in one of its
 *     two buckets, pointing at a slot whose key is that key.
 *  2. A slot is in exactly one of: pointed at by a word (live), or the
 *     free FIFO. The FIFO holds nslots - live >= nslots - capacity >=
 *     EC_DYN_SPARE_MIN slots, so an update always finds a free slot, and a
 *     slot freed now is rewritten only after every slot freed before it.
 *  3. The LRU list links exactly the live slots, least recently written
 *     first; a slot's place moves with its key when an update moves it.
 *  4. A batch is applied only after the log holds it; applying depends on
 *     nothing but the table's state and the batch (no clock, no random), so
 *     replay reproduces it, evictions included.
 */
#include "dyntable.h"
#include "dyntable_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/hash.h"
#include "common/ivffile.h"
#include "common/log.h"
#include "core/catalog.h"
#include "core/partfile.h"
#include "shm/index.h"

#define NIL UINT64_MAX
#define PREFETCH 8u

static double now_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- free FIFO and LRU ------------------------------------------- */

static uint64_t fifo_pop(struct dtab *t)
{
    uint64_t s;

    assert(t->fcount > 0);
    s = t->fifo[t->fhead];
    t->fhead = t->fhead + 1 == t->v.nslots ? 0 : t->fhead + 1;
    t->fcount--;
    return s;
}

static void fifo_push(struct dtab *t, uint64_t s)
{
    uint64_t at = t->fhead + t->fcount;

    assert(t->fcount < t->v.nslots);
    if (at >= t->v.nslots)
        at -= t->v.nslots;
    t->fifo[at] = s;
    t->fcount++;
}

static void lru_unlink(struct dtab *t, uint64_t s)
{
    uint64_t p = t->prev[s], n = t->next[s];

    if (p != NIL)
        t->next[p] = n;
    else
        t->lru_head = n;
    if (n != NIL)
        t->prev[n] = p;
    else
        t->lru_tail = p;
    t->prev[s] = t->next[s] = NIL;
}

static void lru_append(struct dtab *t, uint64_t s)
{
    t->prev[s] = t->lru_tail;
    t->next[s] = NIL;
    if (t->lru_tail != NIL)
        t->next[t->lru_tail] = s;
    else
        t->lru_head = s;
    t->lru_tail = s;
}

/* ---- applying ------------------------------------------------------ */

/* Remove the key whose word is at (bucket, way) and slot. */
static void remove_at(struct dtab *t, uint64_t bucket, unsigned way, uint64_t slot)
{
    ec_dyn_word_set_w(&t->v, 0, bucket, way, NIL);
    atomic_store_explicit(&ec_dyn_slot_w(&t->v, slot)->live, 0, memory_order_relaxed);
    lru_unlink(t, slot);
    fifo_push(t, slot);
    t->live--;
}

/* Evict the least recently written key of the two buckets of key (when
 * both are full), or of the table. */
static void evict_one(struct dtab *t, int64_t near_key, bool near)
{
    uint64_t bucket = 0, slot = NIL, s2;
    unsigned way = 0;

    if (near) {
        ec_dyn_hash h;
        uint64_t bs[2];
        ec_dyn_hash_of(t->v.nbuckets, t->v.salt, near_key, &h);
        bs[0] = h.b1;
        bs[1] = h.b2;
        /* The LRU list has no ranks: walk from the head until one of the
         * 16 slots is met (they are all live, so one is). */
        for (uint64_t s = t->lru_head; s != NIL && slot == NIL; s = t->next[s])
            for (int i = 0; i < 2 && slot == NIL; i++)
                for (unsigned w = 0; w < EC_DYN_WAYS; w++)
                    if ((atomic_load_explicit(&t->v.buckets[bs[i]].word[w],
                                              memory_order_relaxed) & EC_DYN_SLOT_MASK) ==
                        s + 1) {
                        slot = s;
                        bucket = bs[i];
                        way = w;
                        break;
                    }
    } else if ((slot = t->lru_head) != NIL &&
               (!ec_dyn_locate_w(&t->v, ec_dyn_slot_at(&t->v, slot)->key, &bucket, &way,
                                 &s2) ||
                s2 != slot)) {
        slot = NIL; /* cannot happen (invariant 3) */
    }
    if (slot == NIL)
        return;
    remove_at(t, bucket, way, slot);
    t->st.evictions++;
}

int dyn_apply_put(struct dtab *t, const int64_t *keys, uint32_t n, const uint8_t *rows,
                  uint64_t lsn, ec_dyn_result *res)
{
    for (uint32_t i = 0; i < n && i < PREFETCH; i++)
        ec_dyn_prefetch(&t->v, keys[i]);
    for (uint32_t i = 0; i < n; i++) {
        int64_t k = keys[i];
        /* A batch's keys are random: load a later key's bucket now, so
         * that its cache miss overlaps this key's work. */
        if (i + PREFETCH < n)
            ec_dyn_prefetch(&t->v, keys[i + PREFETCH]);
        const uint8_t *row = rows + (uint64_t)i * t->row_bytes;
        uint64_t bucket, slot, fresh;
        unsigned way;

        if (ec_dyn_locate_w(&t->v, k, &bucket, &way, &slot)) {
            fresh = fifo_pop(t);
            ec_dyn_slot_write_w(&t->v, fresh, k, row, lsn);
            ec_dyn_word_set_w(&t->v, k, bucket, way, fresh);
            atomic_store_explicit(&ec_dyn_slot_w(&t->v, slot)->live, 0, memory_order_relaxed);
            lru_unlink(t, slot);
            fifo_push(t, slot);
            lru_append(t, fresh);
            res->updated++;
            t->st.updates++;
            continue;
        }
        if (t->live >= t->capacity) {
            if (t->policy != EC_DYN_EVICT_LRU) {
                res->applied = i;
                return ec_seterr(EC_ENOSPC, "table '%s' of model '%s' version %" PRId64
                                 " is full (%" PRIu64 " keys): key %" PRId64 " refused",
                                 t->name, t->model, t->version, t->capacity, k);
            }
            evict_one(t, 0, false);
            res->evicted++;
        }
        if (!ec_dyn_free_way_w(&t->v, k, &bucket, &way)) {
            if (t->policy != EC_DYN_EVICT_LRU) {
                res->applied = i;
                t->st.refused++;
                return ec_seterr(EC_ENOSPC, "table '%s' of model '%s' version %" PRId64
                                 ": no room for key %" PRId64 " in its buckets (the table "
                                 "is unevenly loaded: give it a larger capacity or the "
                                 "evict-lru policy)", t->name, t->model, t->version, k);
            }
            evict_one(t, k, true);
            res->evicted++;
            if (!ec_dyn_free_way_w(&t->v, k, &bucket, &way)) {
                res->applied = i;
                return ec_seterr(EC_EINTERNAL, "table '%s': no way freed for key %" PRId64,
                                 t->name, k);
            }
        }
        fresh = fifo_pop(t);
        ec_dyn_slot_write_w(&t->v, fresh, k, row, lsn);
        ec_dyn_word_set_w(&t->v, k, bucket, way, fresh);
        lru_append(t, fresh);
        t->live++;
        res->inserted++;
        t->st.inserts++;
    }
    res->applied = n;
    t->st.puts += n;
    return 0;
}

void dyn_apply_del(struct dtab *t, const int64_t *keys, uint32_t n, ec_dyn_result *res)
{
    for (uint32_t i = 0; i < n; i++) {
        uint64_t bucket, slot;
        unsigned way;
        if (!ec_dyn_locate_w(&t->v, keys[i], &bucket, &way, &slot)) {
            res->missing++;
            continue;
        }
        remove_at(t, bucket, way, slot);
        res->deleted++;
        t->st.deletes++;
    }
    res->applied = n;
}

void dyn_publish_gauges(struct dtab *t)
{
    ec_dyn_header *h = (ec_dyn_header *)(uintptr_t)t->v.hdr;

    atomic_store_explicit(&h->live, t->live, memory_order_relaxed);
    /* Release: a reader that loads lsn sees the slots of every batch up to
     * it (shm/dyntable.h). */
    atomic_store_explicit(&h->lsn, t->lsn, memory_order_release);
    atomic_store_explicit(&h->puts, t->st.puts, memory_order_relaxed);
    atomic_store_explicit(&h->deletes, t->st.deletes, memory_order_relaxed);
    atomic_store_explicit(&h->evictions, t->st.evictions, memory_order_relaxed);
}

/* ---- tables --------------------------------------------------------- */

static void tab_free(struct ec_dyn *d, struct dtab *t)
{
    if (!t)
        return;
    if (t->published)
        ec_index_remove(ec_engine_segment(d->e), t->tensor, EC_DYN_PART, NULL, NULL);
    if (t->bytes)
        ec_engine_region_free(d->e, t->off, t->bytes);
    free(t->fifo);
    free(t->prev);
    free(t->next);
    free(t);
}

/* Read the rows of base (a catalog tensor) into t, with their keys: the
 * version's "<name>.keys" tensor when it has one, else 0..rows-1. */
static int load_base(struct ec_dyn *d, struct dtab *t, const ec_cat_tensor *base)
{
    ec_catalog *cat = ec_engine_catalog(d->e);
    ec_cat_tensor kt = {0};
    ec_partfile_meta meta, kmeta;
    char path[4096 + EC_CAT_PATH_MAX + 2], kname[EC_NAME_MAX + 8];
    uint8_t *buf = NULL;
    int64_t *keys = NULL;
    int fd = -1, kfd = -1, rc;
    bool have_keys = false;
    char vbuf[32];
    ec_dyn_result res = {0};

    if (base->rows > t->capacity)
        return ec_seterr(EC_EINVAL, "tensor '%s' has %" PRIu64 " rows, more than the "
                         "capacity %" PRIu64 " asked for", base->name, base->rows, t->capacity);
    snprintf(vbuf, sizeof(vbuf), "%" PRId64, base->version);
    if (snprintf(kname, sizeof(kname), "%s.keys", base->name) < (int)sizeof(kname) &&
        strlen(kname) <= EC_NAME_MAX) {
        rc = ec_catalog_resolve(cat, base->model, vbuf, kname, &kt);
        if (rc == 0) {
            if (kt.dtype != EC_DTYPE_I64 || kt.ndim != 1 || kt.rows != base->rows) {
                rc = ec_seterr(EC_EINVAL, "tensor '%s' of model '%s' version %" PRId64 " is "
                               "not an int64 vector of %" PRIu64 " keys", kname, base->model,
                               base->version, base->rows);
                goto out;
            }
            have_keys = true;
        } else if (rc != EC_ENOENT) {
            goto out;
        }
        ec_clearerr();
    }
    snprintf(path, sizeof(path), "%s/%s", d->cfg.data_dir, base->path);
    if ((rc = ec_partfile_open(path, &meta, &fd)) < 0)
        goto out;
    if (meta.header_checksum != base->header_checksum || meta.partitions != base->partitions ||
        meta.row_bytes != t->row_bytes) {
        rc = ec_seterr(EC_ECORRUPT, "the partition file of tensor '%s' does not match the "
                       "catalog; run `embcache recover`", base->name);
        goto out;
    }
    if (have_keys) {
        snprintf(path, sizeof(path), "%s/%s", d->cfg.data_dir, kt.path);
        if ((rc = ec_partfile_open(path, &kmeta, &kfd)) < 0)
            goto out;
        if (kmeta.header_checksum != kt.header_checksum) {
            rc = ec_seterr(EC_ECORRUPT, "the partition file of tensor '%s' does not match the "
                           "catalog; run `embcache recover`", kname);
            goto out;
        }
    }
    {
        uint64_t maxlen = 0;
        for (uint64_t p = 0; p < meta.partitions; p++)
            if (ec_partfile_part_length(&meta, p) > maxlen)
                maxlen = ec_partfile_part_length(&meta, p);
        buf = malloc(maxlen ? maxlen : 1);
        keys = malloc((have_keys ? base->rows : meta.rows_per_partition) * sizeof(*keys) + 8);
        if (!buf || !keys) {
            rc = ec_seterr(EC_ENOMEM, "loading tensor '%s'", base->name);
            goto out;
        }
    }
    /* Every key first (checked: a key file is read partition by partition
     * against the catalog's checksums like the rows). */
    for (uint64_t p = 0, row = 0; have_keys && p < kmeta.partitions; p++) {
        uint64_t len = ec_partfile_part_length(&kmeta, p);
        if (len % 8 || row + len / 8 > base->rows) {
            rc = ec_seterr(EC_ECORRUPT, "tensor '%s': partition %" PRIu64 " of %" PRIu64
                           " bytes does not hold whole keys", kname, p, len);
            goto out;
        }
        if ((rc = ec_partfile_read_partition(kfd, &kmeta, p, keys + row,
                                             kt.part_checksums[p])) < 0)
            goto out;
        row += len / 8;
    }
    for (uint64_t p = 0, row = 0; p < meta.partitions; p++) {
        uint64_t len = ec_partfile_part_length(&meta, p), nrows = len / t->row_bytes;
        const int64_t *pk = keys;
        if (row + nrows > base->rows) {
            rc = ec_seterr(EC_ECORRUPT, "tensor '%s': partition %" PRIu64 " passes its rows",
                           base->name, p);
            goto out;
        }
        if ((rc = ec_partfile_read_partition(fd, &meta, p, buf, base->part_checksums[p])) < 0)
            goto out;
        if (have_keys)
            pk = keys + row;
        else
            for (uint64_t i = 0; i < nrows; i++)
                keys[i] = (int64_t)(row + i);
        if ((rc = dyn_apply_put(t, pk, (uint32_t)nrows, buf, t->base_lsn, &res)) < 0)
            goto out;
        row += nrows;
    }
    if (have_keys && res.updated) {
        rc = ec_seterr(EC_EINVAL, "tensor '%s' of model '%s' version %" PRId64 " repeats "
                       "%" PRIu64 " keys; keys of a table are unique", kname, base->model,
                       base->version, res.updated);
        goto out;
    }
    /* The base's own rows are not updates. */
    memset(&t->st, 0, sizeof(t->st));
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    if (kfd >= 0)
        close(kfd);
    free(buf);
    free(keys);
    ec_cat_tensor_clear(&kt);
    return rc;
}

/* Make a table for tensor ct (dynamic record rec): reserve, lay out, load
 * the base. Not yet published. */
static int tab_build(struct ec_dyn *d, const ec_cat_tensor *ct, const ec_catalog_dyn *rec,
                     struct dtab **out)
{
    ec_catalog *cat = ec_engine_catalog(d->e);
    ec_segment *seg = ec_engine_segment(d->e);
    struct dtab *t = calloc(1, sizeof(*t));
    ec_cat_tensor base = {0};
    uint64_t nb, ns, sb;
    int rc;

    if (!t)
        return ec_seterr(EC_ENOMEM, "dynamic table");
    t->tensor = (uint32_t)ct->id;
    t->version_id = ct->version_id;
    snprintf(t->model, sizeof(t->model), "%s", ct->model);
    snprintf(t->name, sizeof(t->name), "%s", ct->name);
    t->version = ct->version;
    t->dtype = ct->dtype;
    t->ndim = ct->ndim;
    memcpy(t->shape, ct->shape, sizeof(t->shape));
    t->row_bytes = ct->row_bytes;
    t->capacity = rec->capacity;
    t->policy = rec->policy;
    t->base_tensor = rec->base_tensor_id;
    t->base_lsn = rec->base_lsn;
    t->lsn = rec->base_lsn;
    t->lru_head = t->lru_tail = NIL;
    if (ct->ndim < 2 || ct->row_bytes == 0) {
        rc = ec_seterr(EC_EINVAL, "tensor '%s' is not a table of rows (it has %u dimensions)",
                       ct->name, ct->ndim);
        goto fail;
    }
    t->bytes = ec_dyn_region_bytes(t->capacity, t->row_bytes, &nb, &ns, &sb);
    t->fifo = malloc(ns * sizeof(*t->fifo));
    t->prev = malloc(ns * sizeof(*t->prev));
    t->next = malloc(ns * sizeof(*t->next));
    if (!t->fifo || !t->prev || !t->next) {
        t->bytes = 0;
        rc = ec_seterr(EC_ENOMEM, "dynamic table '%s': %" PRIu64 " slots", ct->name, ns);
        goto fail;
    }
    if ((rc = ec_engine_region_alloc(d->e, t->bytes, &t->off)) < 0) {
        t->bytes = 0;
        ec_adderr(rc, "dynamic table '%s' of %" PRIu64 " keys needs %" PRIu64 " bytes",
                  ct->name, t->capacity, t->bytes);
        goto fail;
    }
    ec_dyn_init_w(seg->data + t->off, t->tensor, t->capacity, t->row_bytes,
                  ec_mix64((uint64_t)ct->id * 0x9e3779b97f4a7c15ull ^ (uint64_t)time(NULL)));
    if ((rc = ec_dyn_view_open(seg, t->off, t->tensor, t->row_bytes, &t->v)) < 0)
        goto fail;
    for (uint64_t s = 0; s < ns; s++) {
        t->fifo[s] = s;
        t->prev[s] = t->next[s] = NIL;
    }
    t->fhead = 0;
    t->fcount = ns;
    if (rec->base_tensor_id && rec->base_tensor_id != ct->id) {
        if ((rc = ec_catalog_get_tensor(cat, rec->base_tensor_id, &base)) < 0)
            goto fail;
        if (base.row_bytes != ct->row_bytes || base.dtype != ct->dtype) {
            rc = ec_seterr(EC_ECORRUPT, "the base of table '%s' (tensor %" PRId64 ") has "
                           "another row format", ct->name, base.id);
            goto fail;
        }
        rc = load_base(d, t, &base);
    } else {
        rc = load_base(d, t, ct);
    }
    if (rc < 0)
        goto fail;
    ec_cat_tensor_clear(&base);
    *out = t;
    return 0;
fail:
    ec_cat_tensor_clear(&base);
    tab_free(d, t);
    return rc;
}

static int tab_publish(struct ec_dyn *d, struct dtab *t)
{
    int rc = ec_index_insert(ec_engine_segment(d->e), t->tensor, EC_DYN_PART, t->off,
                             EC_SHM_PAGE);

    if (rc < 0)
        return ec_adderr(rc, "publishing dynamic table '%s'", t->name);
    t->published = true;
    dyn_publish_gauges(t);
    return ec_u64map_put(&d->tabs, t->tensor, t);
}

struct dtab *dyn_tab(const struct ec_dyn *d, uint32_t tensor)
{
    return tensor ? ec_u64map_get(&d->tabs, tensor) : NULL;
}

bool ec_dyn_has(const ec_dyn *d, uint32_t tensor)
{
    return d && dyn_tab(d, tensor) != NULL;
}

/* ---- open: rebuild from the catalog and the log --------------------- */

/* The log cannot be used: keep why, serve no table, refuse every request
 * with it (the rest of the daemon serves on). */
static void broken(struct ec_dyn *d, int rc)
{
    d->broken = rc;
    snprintf(d->broken_msg, sizeof(d->broken_msg), "dynamic tables are not served: %s; "
             "nothing was deleted: fix or move the damaged file of %s/wal (the message names "
             "it) and restart embcached", ec_last_error(), d->cfg.data_dir);
    ec_error("%s", d->broken_msg);
    d->st.load_failures++;
}

static int refuse_broken(const struct ec_dyn *d)
{
    return ec_seterr(d->broken, "%s", d->broken_msg);
}

struct open_ctx {
    struct ec_dyn *d;
    ec_catalog_dyn *recs;
    size_t n, cap;
};

static int collect_rec(const ec_catalog_dyn *r, void *arg)
{
    struct open_ctx *c = arg;

    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        ec_catalog_dyn *p = realloc(c->recs, cap * sizeof(*p));
        if (!p)
            return ec_seterr(EC_ENOMEM, "dynamic tables");
        c->recs = p;
        c->cap = cap;
    }
    c->recs[c->n++] = *r;
    return 0;
}

static int replay_one(void *arg, const ec_wal_record *r)
{
    struct ec_dyn *d = arg;
    struct dtab *t = dyn_tab(d, r->table);
    ec_dyn_result res = {0};

    d->st.replayed++;
    if (!t || r->lsn <= t->base_lsn)
        return 0; /* a table retired since, or folded into its base */
    if (r->op == EC_WAL_PUT && r->row_bytes == t->row_bytes) {
        if (dyn_apply_put(t, r->keys, r->n, r->rows, r->lsn, &res) < 0)
            ec_warn("replaying update %" PRIu64 " of table '%s': %s (as when it was made)",
                    r->lsn, t->name, ec_last_error());
    } else if (r->op == EC_WAL_DEL) {
        dyn_apply_del(t, r->keys, r->n, &res);
    } else {
        return ec_seterr(EC_ECORRUPT, "log record %" PRIu64 " of table '%s' has rows of %u "
                         "bytes, the table %" PRIu64, r->lsn, t->name, r->row_bytes,
                         t->row_bytes);
    }
    t->lsn = r->lsn;
    d->st.replayed_applied++;
    return 0;
}

/* A table's KEYED index (core/server_index.c) built at an lsn the table
 * no longer reaches, because the log came back shorter (a machine crash
 * under --wal-sync interval or none), would take the rows written from now
 * on, whose lsns start again below it, for indexed ones: remove it. */
static void drop_index_ahead(const struct ec_dyn *d, const struct dtab *t)
{
    char path[4200];
    ec_ivf_header h;

    snprintf(path, sizeof(path), "%s/indexes/%u.ivf", d->cfg.data_dir, t->tensor);
    if (ec_ivf_read_header(path, &h) == 0 && (h.flags & EC_IVF_KEYED) && h.built_lsn > t->lsn) {
        ec_warn("the index of dynamic table '%s' of model '%s' version %" PRId64 " was built "
                "at lsn %" PRIu64 ", and the log came back to %" PRIu64 " (it lost its tail): "
                "removed; build it again", t->name, t->model, t->version,
                (uint64_t)h.built_lsn, t->lsn);
        if (unlink(path) < 0)
            ec_error("removing %s: %s", path, strerror(errno));
    }
    ec_clearerr();
}

int ec_dyn_open(ec_engine *e, const ec_dyn_config *cfg, ec_dyn **out)
{
    struct ec_dyn *d = calloc(1, sizeof(*d));
    struct open_ctx c = {.d = d};
    ec_wal_config wc = {0};
    char *waldir = NULL;
    int rc;

    if (!d)
        return ec_seterr(EC_ENOMEM, "dynamic tables");
    d->e = e;
    d->cfg = *cfg;
    d->cfg.sync_ms = cfg->sync_ms ? cfg->sync_ms : 100;
    if (!(d->data_dir = strdup(cfg->data_dir)) ||
        asprintf(&waldir, "%s/wal", cfg->data_dir) < 0) {
        waldir = NULL;
        rc = ec_seterr(EC_ENOMEM, "dynamic tables");
        goto fail;
    }
    d->cfg.data_dir = d->data_dir;
    wc.dir = waldir;
    wc.sync = cfg->sync;
    wc.file_bytes = cfg->wal_file_bytes;
    wc.direct = true;
    if ((rc = ec_wal_open(&wc, &d->wal)) < 0) {
        /* The rest of the daemon serves; no dynamic table does, and nothing
         * of the log is touched until someone looks at it. */
        d->wal = NULL;
        broken(d, rc);
        goto done;
    }
    if ((rc = ec_catalog_dyn_each(ec_engine_catalog(e), collect_rec, &c)) < 0)
        goto fail;
    for (size_t i = 0; i < c.n; i++) {
        ec_cat_tensor ct = {0};
        struct dtab *t = NULL;
        rc = ec_catalog_get_tensor(ec_engine_catalog(e), c.recs[i].tensor_id, &ct);
        if (rc == 0)
            rc = tab_build(d, &ct, &c.recs[i], &t);
        if (rc == 0 && (rc = tab_publish(d, t)) < 0)
            tab_free(d, t);
        if (rc < 0) {
            ec_error("dynamic table of tensor %" PRId64 " (%s) is not served: %s",
                     c.recs[i].tensor_id, ct.name, ec_last_error());
            d->st.load_failures++;
        }
        ec_cat_tensor_clear(&ct);
    }
    rc = ec_wal_replay(d->wal, replay_one, d);
    if (rc < 0) {
        for (size_t i = 0; i < d->tabs.cap; i++)
            if (d->tabs.keys[i])
                tab_free(d, d->tabs.vals[i]);
        ec_u64map_free(&d->tabs);
        broken(d, rc);
        goto done;
    }
    for (size_t i = 0; i < d->tabs.cap; i++)
        if (d->tabs.keys[i]) {
            dyn_publish_gauges(d->tabs.vals[i]);
            drop_index_ahead(d, d->tabs.vals[i]);
        }
done:
    d->last_sync = now_s();
    d->cat_changes = ec_catalog_changes();
    free(c.recs);
    free(waldir);
    *out = d;
    return 0;
fail:
    free(c.recs);
    free(waldir);
    ec_dyn_close(d);
    return rc;
}

void ec_dyn_close(ec_dyn *d)
{
    if (!d)
        return;
    if (d->wal) {
        ec_wal_sync(d->wal);
        ec_wal_close(d->wal);
    }
    /* The tables' extents go with the engine; their entries stay in the
     * segment until the next daemon drops them (it rebuilds the tables). */
    for (size_t i = 0; i < d->tabs.cap; i++)
        if (d->tabs.keys[i]) {
            struct dtab *t = d->tabs.vals[i];
            free(t->fifo);
            free(t->prev);
            free(t->next);
            free(t);
        }
    ec_u64map_free(&d->tabs);
    free(d->data_dir);
    free(d);
}

/* ---- requests ------------------------------------------------------- */

int ec_dyn_make(ec_dyn *d, const char *model, const char *version, const char *tensor,
                uint64_t capacity, uint32_t policy)
{
    ec_catalog *cat = ec_engine_catalog(d->e);
    ec_cat_tensor ct = {0};
    ec_catalog_dyn rec = {0};
    struct dtab *t = NULL, *have;
    int rc;

    if (d->broken)
        return refuse_broken(d);
    if (policy != EC_DYN_REFUSE && policy != EC_DYN_EVICT_LRU)
        return ec_seterr(EC_EINVAL, "unknown policy %u: 1 (refuse) or 2 (evict-lru)", policy);
    if ((rc = ec_catalog_resolve(cat, model, version, tensor, &ct)) < 0)
        return rc;
    if (capacity == 0)
        capacity = ct.rows * 2 > 1024 ? ct.rows * 2 : 1024;
    if (capacity > EC_DYN_CAPACITY_MAX || capacity < ct.rows) {
        rc = ec_seterr(EC_EINVAL, "capacity %" PRIu64 " for tensor '%s' (%" PRIu64 " rows): "
                       "give at least its rows and at most 2^36", capacity, ct.name, ct.rows);
        goto out;
    }
    if ((have = dyn_tab(d, (uint32_t)ct.id))) {
        rc = have->capacity == capacity && have->policy == policy
                 ? 0
                 : ec_seterr(EC_EEXIST, "tensor '%s' of model '%s' version %" PRId64 " is "
                             "dynamic already, with capacity %" PRIu64 " and policy %s",
                             ct.name, ct.model, ct.version, have->capacity,
                             have->policy == EC_DYN_REFUSE ? "refuse" : "evict-lru");
        goto out;
    }
    rec.tensor_id = ct.id;
    rec.capacity = capacity;
    rec.policy = policy;
    rec.base_lsn = ec_wal_last_lsn(d->wal);
    if ((rc = tab_build(d, &ct, &rec, &t)) < 0)
        goto out;
    /* Recorded before it is served: a table served but not recorded would
     * take updates that the next start could not replay. */
    if ((rc = ec_catalog_dyn_put(cat, &rec)) < 0 || (rc = tab_publish(d, t)) < 0) {
        tab_free(d, t);
        goto out;
    }
    ec_info("tensor '%s' of model '%s' version %" PRId64 " is dynamic: %" PRIu64 " keys of "
            "%" PRIu64 " (%s), %" PRIu64 " bytes", ct.name, ct.model, ct.version, t->live,
            capacity, policy == EC_DYN_REFUSE ? "refuse" : "evict-lru", t->bytes);
out:
    ec_cat_tensor_clear(&ct);
    return rc;
}

/* New keys of a batch, each counted once (for EC_DYN_REFUSE's check). */
static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int count_new(struct dtab *t, const int64_t *keys, uint32_t n, uint64_t *out)
{
    int64_t *fresh = malloc((n ? n : 1) * sizeof(*fresh));
    uint64_t m = 0, u = 0, b = 0, s = 0;
    unsigned w;

    if (!fresh)
        return ec_seterr(EC_ENOMEM, "checking a batch of %u keys", n);
    for (uint32_t i = 0; i < n; i++)
        if (!ec_dyn_locate_w(&t->v, keys[i], &b, &w, &s))
            fresh[m++] = keys[i];
    qsort(fresh, m, sizeof(*fresh), cmp_i64);
    for (uint64_t i = 0; i < m; i++)
        if (i == 0 || fresh[i] != fresh[i - 1])
            u++;
    free(fresh);
    *out = u;
    return 0;
}

static int table_for(ec_dyn *d, uint32_t tensor, struct dtab **out)
{
    struct dtab *t = dyn_tab(d, tensor);

    if (d->broken)
        return refuse_broken(d);
    if (!t)
        return ec_seterr(EC_ENOENT, "tensor %u is not a dynamic table (make it one with "
                         "`embcache dynamic`), or it was retired", tensor);
    *out = t;
    return 0;
}

int ec_dyn_put(ec_dyn *d, uint32_t tensor, const int64_t *keys, uint32_t n, const void *rows,
               uint64_t row_bytes, ec_dyn_result *res)
{
    struct dtab *t = NULL;
    uint64_t lsn;
    int rc;

    memset(res, 0, sizeof(*res));
    if ((rc = table_for(d, tensor, &t)) < 0)
        return rc;
    if (row_bytes != t->row_bytes)
        return ec_seterr(EC_EINVAL, "rows of %" PRIu64 " bytes for table '%s', whose rows "
                         "have %" PRIu64, row_bytes, t->name, t->row_bytes);
    if (n == 0)
        return 0;
    if (t->policy == EC_DYN_REFUSE && t->live + n > t->capacity) {
        uint64_t fresh = 0;
        if ((rc = count_new(t, keys, n, &fresh)) < 0)
            return rc;
        if (t->live + fresh > t->capacity) {
            t->st.refused++;
            return ec_seterr(EC_ENOSPC, "table '%s' of model '%s' version %" PRId64 " holds "
                             "%" PRIu64 " of %" PRIu64 " keys: %" PRIu64 " new keys do not fit; "
                             "nothing applied (delete keys, or make a table of a larger "
                             "capacity or with the evict-lru policy)", t->name, t->model,
                             t->version, t->live, t->capacity, fresh);
        }
    }
    if ((rc = ec_wal_append(d->wal, t->tensor, EC_WAL_PUT, keys, n, rows,
                            (uint32_t)row_bytes, &lsn)) < 0)
        return ec_adderr(rc, "logging an update of table '%s' (nothing applied)", t->name);
    rc = dyn_apply_put(t, keys, n, rows, lsn, res);
    t->lsn = res->lsn = lsn;
    dyn_publish_gauges(t);
    return rc;
}

int ec_dyn_delete(ec_dyn *d, uint32_t tensor, const int64_t *keys, uint32_t n,
                  ec_dyn_result *res)
{
    struct dtab *t = NULL;
    uint64_t lsn;
    int rc;

    memset(res, 0, sizeof(*res));
    if ((rc = table_for(d, tensor, &t)) < 0)
        return rc;
    if (n == 0)
        return 0;
    if ((rc = ec_wal_append(d->wal, t->tensor, EC_WAL_DEL, keys, n, NULL, 0, &lsn)) < 0)
        return ec_adderr(rc, "logging a delete of table '%s' (nothing applied)", t->name);
    dyn_apply_del(t, keys, n, res);
    t->lsn = res->lsn = lsn;
    dyn_publish_gauges(t);
    return 0;
}

/* ---- upkeep and stats ------------------------------------------------ */

int ec_dyn_timeout_ms(const ec_dyn *d)
{
    return d && d->cfg.sync == EC_WAL_SYNC_INTERVAL ? (int)d->cfg.sync_ms : -1;
}

int ec_dyn_set_sync(ec_dyn *d, ec_wal_sync_mode mode, uint32_t sync_ms)
{
    int rc;

    if (!d)
        return ec_seterr(EC_EINVAL, "ec_dyn_set_sync: no dynamic tables");
    if (d->wal && (rc = ec_wal_set_sync(d->wal, mode)) < 0)
        return rc;
    d->cfg.sync = mode;
    d->cfg.sync_ms = sync_ms ? sync_ms : 100;
    d->last_sync = now_s();
    return 0;
}

void ec_dyn_tick(ec_dyn *d)
{
    if (!d)
        return;
    if (d->wal && d->cfg.sync == EC_WAL_SYNC_INTERVAL && now_s() - d->last_sync >= d->cfg.sync_ms / 1e3) {
        if (ec_wal_sync(d->wal) < 0)
            ec_error("syncing the write-ahead log: %s", ec_last_error());
        d->last_sync = now_s();
    }
    if (ec_catalog_changes() != d->cat_changes) {
        ec_catalog *cat = ec_engine_catalog(d->e);
        d->cat_changes = ec_catalog_changes();
        for (size_t i = 0; i < d->tabs.cap; i++) {
            struct dtab *t;
            ec_cat_tensor ct = {0};
            if (!d->tabs.keys[i])
                continue;
            t = d->tabs.vals[i];
            if (ec_catalog_get_tensor(cat, t->tensor, &ct) == EC_ENOENT) {
                ec_info("dynamic table '%s' of model '%s' version %" PRId64 " dropped: its "
                        "version was retired", t->name, t->model, t->version);
                ec_u64map_del(&d->tabs, t->tensor);
                tab_free(d, t);
                i = (size_t)-1; /* the map moved entries: start over */
            }
            ec_clearerr();
            ec_cat_tensor_clear(&ct);
        }
    }
}

void ec_dyn_foreach(const ec_dyn *d, void (*fn)(const ec_dyn_stat *s, void *arg), void *arg)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->tabs.cap; i++) {
        const struct dtab *t;
        ec_dyn_stat s;
        if (!d->tabs.keys[i])
            continue;
        t = d->tabs.vals[i];
        s = (ec_dyn_stat){.tensor = t->tensor, .model = t->model, .name = t->name,
                          .version = t->version, .capacity = t->capacity, .keys = t->live,
                          .row_bytes = t->row_bytes, .bytes = t->bytes, .policy = t->policy,
                          .lsn = t->lsn, .base_lsn = t->base_lsn, .puts = t->st.puts,
                          .inserts = t->st.inserts, .updates = t->st.updates,
                          .deletes = t->st.deletes, .evictions = t->st.evictions,
                          .refused = t->st.refused};
        fn(&s, arg);
    }
}

void ec_dyn_totals(const ec_dyn *d, void (*put)(const char *name, uint64_t v, void *arg),
                   void *arg)
{
    ec_wal_stats ws = {0};
    uint64_t tables = 0;

    if (!d)
        return;
    put("dyn_broken", d->broken != 0, arg);
    for (size_t i = 0; i < d->tabs.cap; i++)
        tables += d->tabs.keys[i] != 0;
    if (d->wal)
        ec_wal_stats_get(d->wal, &ws);
    put("dyn_tables", tables, arg);
    put("dyn_load_failures", d->st.load_failures, arg);
    put("wal_files", ws.files, arg);
    put("wal_bytes", ws.bytes, arg);
    put("wal_appends", ws.appends, arg);
    put("wal_syncs", ws.syncs, arg);
    put("wal_last_lsn", ws.last_lsn, arg);
    put("wal_replayed", d->st.replayed, arg);
    put("wal_torn_bytes", ws.truncated_bytes, arg);
    put("wal_direct", ws.direct, arg);
    put("wal_direct_appends", ws.direct_appends, arg);
}
