/*
 * dyntable_snap.c - `embcache snapshot`: fold the dynamic tables of a
 * model version into a new immutable version, and make it their base.
 *
 * The new version has every tensor of the old one. A dynamic tensor T
 * becomes its present rows, least recently written first, with "T.keys"
 * (int64) beside it; a static tensor is copied from its partition file
 * (each partition checked against the catalog). They are written as one
 * safetensors file in the data directory (unlinked at once; only its
 * descriptor lives) and imported like any file (core/import.h): partition
 * files, fsync, one catalog transaction. Then each table's catalog record
 * names the new tensor as its base, with the lsn it had, and the log's
 * files that only hold records up to there go.
 *
 * Why least recently written first: a restart loads the base in file order
 * and that order is the table's eviction order, so a table that evicts
 * (EC_DYN_EVICT_LRU) replays the log after the snapshot to exactly the
 * keys it had acknowledged.
 *
 * Runs on the server thread and holds it while it writes: a snapshot of a
 * table of G bytes stalls other requests for about the time to write 2G
 * bytes (stated in the README).
 */
#include "core/dyntable_impl.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/catalog.h"
#include "core/import.h"
#include "core/partfile.h"
#include "core/tensorfile.h"

struct stensor {
    ec_cat_tensor ct;            /* a copy; part_checksums owned */
    struct dtab *t;              /* dynamic: its table; NULL: static */
    bool keys_of_dynamic;        /* "T.keys" of a dynamic T: replaced */
};

struct snap {
    struct ec_dyn *d;
    int64_t version_id;
    struct stensor *ts;
    size_t n, cap;
    int64_t max_version, round;
    char *params;
};

static int collect_tensor(const ec_cat_tensor *ct, void *arg)
{
    struct snap *x = arg;
    struct stensor *s;

    if (x->n == x->cap) {
        size_t cap = x->cap ? x->cap * 2 : 8;
        struct stensor *p = realloc(x->ts, cap * sizeof(*p));
        if (!p)
            return ec_seterr(EC_ENOMEM, "snapshot");
        x->ts = p;
        x->cap = cap;
    }
    s = &x->ts[x->n];
    memset(s, 0, sizeof(*s));
    s->ct = *ct;
    s->ct.part_checksums = malloc((ct->partitions ? ct->partitions : 1) * 8);
    if (!s->ct.part_checksums)
        return ec_seterr(EC_ENOMEM, "snapshot");
    memcpy(s->ct.part_checksums, ct->part_checksums, ct->partitions * 8);
    x->n++;
    return 0;
}

static int note_version(const ec_cat_version *v, void *arg)
{
    struct snap *x = arg;

    if (v->version > x->max_version)
        x->max_version = v->version;
    if (v->id == x->version_id) {
        x->round = v->round;
        free(x->params);
        x->params = strdup(v->params_json ? v->params_json : "{}");
    }
    return 0;
}

static int write_all(int fd, const void *p, size_t n)
{
    return ec_import_write(fd, p, n, "a snapshot");
}

/* The live slots of t, least recently written first. */
static uint64_t *lru_slots(const struct dtab *t)
{
    uint64_t *s = malloc((t->live ? t->live : 1) * sizeof(*s)), i = 0;

    if (!s)
        return NULL;
    for (uint64_t x = t->lru_head; x != UINT64_MAX && i < t->live; x = t->next[x])
        s[i++] = x;
    return s;
}

static int shape_json(char *buf, size_t cap, size_t *len, const uint64_t *shape, uint32_t ndim,
                      uint64_t rows)
{
    int k = snprintf(buf + *len, cap - *len, "[");
    *len += (size_t)k;
    for (uint32_t i = 0; i < ndim && *len < cap; i++) {
        k = snprintf(buf + *len, cap - *len, "%s%" PRIu64, i ? "," : "", i == 0 ? rows : shape[i]);
        *len += (size_t)k;
    }
    if (*len >= cap - 2)
        return ec_seterr(EC_ETOOBIG, "snapshot header too long");
    *len += (size_t)snprintf(buf + *len, cap - *len, "]");
    return 0;
}

/* Write the safetensors file: header, then each tensor's bytes. */
static int write_file(struct snap *x, int fd)
{
    size_t cap = 1 << 20, len = 0;
    char *hdr = malloc(cap);
    uint64_t off = 0, hlen;
    uint8_t *buf = NULL;
    int rc = 0;

    if (!hdr)
        return ec_seterr(EC_ENOMEM, "snapshot");
    len += (size_t)snprintf(hdr, cap, "{");
    for (size_t i = 0; i < x->n && rc == 0; i++) {
        struct stensor *s = &x->ts[i];
        uint64_t rows = s->t ? s->t->live : s->ct.rows, bytes = rows * s->ct.row_bytes;
        const char *dt = ec_safetensors_dtype_name(s->ct.dtype);
        if (s->keys_of_dynamic)
            continue;
        if (!dt || len > cap - 4096) {
            rc = ec_seterr(EC_EDTYPE, "snapshot of tensor '%s': dtype or header", s->ct.name);
            break;
        }
        len += (size_t)snprintf(hdr + len, cap - len, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":",
                                len > 1 ? "," : "", s->ct.name, dt);
        if (s->ct.ndim == 0)
            len += (size_t)snprintf(hdr + len, cap - len, "[]");
        else if ((rc = shape_json(hdr, cap, &len, s->ct.shape, s->ct.ndim, rows)) < 0)
            break;
        len += (size_t)snprintf(hdr + len, cap - len,
                                ",\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off, off + bytes);
        off += bytes;
        if (s->t) {
            len += (size_t)snprintf(hdr + len, cap - len, ",\"%s.keys\":{\"dtype\":\"I64\","
                                    "\"shape\":[%" PRIu64 "],\"data_offsets\":[%" PRIu64
                                    ",%" PRIu64 "]}", s->ct.name, rows, off, off + rows * 8);
            off += rows * 8;
        }
    }
    if (rc == 0) {
        len += (size_t)snprintf(hdr + len, cap - len, "}");
        while (len % 8)
            hdr[len++] = ' ';
        hlen = len;
        if ((rc = write_all(fd, &hlen, 8)) == 0)
            rc = write_all(fd, hdr, len);
    }
    free(hdr);
    /* The bytes, in the header's order. */
    for (size_t i = 0; i < x->n && rc == 0; i++) {
        struct stensor *s = &x->ts[i];
        if (s->keys_of_dynamic)
            continue;
        if (s->t) {
            struct dtab *t = s->t;
            uint64_t *slots = lru_slots(t);
            int64_t *keys = malloc((t->live ? t->live : 1) * 8);
            if (!slots || !keys) {
                free(slots);
                free(keys);
                return ec_seterr(EC_ENOMEM, "snapshot of '%s'", t->name);
            }
            for (uint64_t j = 0; j < t->live && rc == 0; j++) {
                const ec_dyn_slot *sl = ec_dyn_slot_at(&t->v, slots[j]);
                keys[j] = atomic_load_explicit(&sl->key, memory_order_relaxed);
                rc = write_all(fd, (const uint8_t *)(sl + 1), t->row_bytes);
            }
            if (rc == 0)
                rc = write_all(fd, keys, t->live * 8);
            free(slots);
            free(keys);
        } else {
            ec_partfile_meta meta;
            char path[4096 + EC_CAT_PATH_MAX + 2];
            int pfd = -1;
            snprintf(path, sizeof(path), "%s/%s", x->d->cfg.data_dir, s->ct.path);
            if ((rc = ec_partfile_open(path, &meta, &pfd)) < 0)
                break;
            for (uint64_t p = 0; p < meta.partitions && rc == 0; p++) {
                uint64_t plen = ec_partfile_part_length(&meta, p);
                uint8_t *nb = realloc(buf, plen ? plen : 1);
                if (!nb) {
                    rc = ec_seterr(EC_ENOMEM, "snapshot");
                    break;
                }
                buf = nb;
                if ((rc = ec_partfile_read_partition(pfd, &meta, p, buf,
                                                     s->ct.part_checksums[p])) == 0)
                    rc = write_all(fd, buf, plen);
            }
            close(pfd);
        }
    }
    free(buf);
    return rc;
}

static bool gc_needed(void *arg, uint32_t table, uint64_t lsn)
{
    struct ec_dyn *d = arg;
    const struct dtab *t = dyn_tab(d, table);

    return t && lsn > t->base_lsn;
}

int ec_dyn_snapshot(ec_dyn *d, const char *model, const char *version, int64_t new_version,
                    int64_t *version_out)
{
    ec_catalog *cat = ec_engine_catalog(d->e);
    struct snap x = {.d = d, .round = -1};
    int64_t v;
    int fd = -1, rc;
    char tmpl[4096];
    uint32_t ntensors = 0, removed = 0;
    size_t ndyn = 0;

    if (d->broken)
        return ec_seterr(d->broken, "%s", d->broken_msg);
    if ((rc = ec_catalog_version_of(cat, model, version, &v)) < 0)
        return rc;
    x.version_id = -1;
    for (size_t i = 0; i < d->tabs.cap; i++) {
        struct dtab *t = d->tabs.vals[i];
        if (d->tabs.keys[i] && !strcmp(t->model, model) && t->version == v)
            x.version_id = t->version_id;
    }
    if (x.version_id < 0)
        return ec_seterr(EC_EINVAL, "model '%s' version %" PRId64 " has no dynamic tensor: "
                         "nothing to snapshot", model, v);
    if ((rc = ec_catalog_list_tensors(cat, x.version_id, collect_tensor, &x)) < 0 ||
        (rc = ec_catalog_list_versions(cat, model, note_version, &x)) < 0)
        goto out;
    if (new_version == 0)
        new_version = x.max_version + 1;
    for (size_t i = 0; i < x.n; i++) {
        struct dtab *t = dyn_tab(d, (uint32_t)x.ts[i].ct.id);
        if (t) {
            x.ts[i].t = t;
            ndyn++;
        }
    }
    for (size_t i = 0; i < x.n; i++) {
        size_t l = strlen(x.ts[i].ct.name);
        if (l > 5 && !strcmp(x.ts[i].ct.name + l - 5, ".keys"))
            for (size_t j = 0; j < x.n; j++)
                if (x.ts[j].t && strlen(x.ts[j].ct.name) == l - 5 &&
                    !strncmp(x.ts[j].ct.name, x.ts[i].ct.name, l - 5))
                    x.ts[i].keys_of_dynamic = true;
    }
    snprintf(tmpl, sizeof(tmpl), "%s/snapshot-XXXXXX", d->cfg.data_dir);
    if ((fd = mkostemp(tmpl, O_CLOEXEC)) < 0) {
        rc = ec_seterr_errno(EC_EIO, errno, "creating a snapshot file in the data directory");
        goto out;
    }
    unlink(tmpl);
    if ((rc = write_file(&x, fd)) < 0)
        goto out;
    {
        ec_import_opts o = {.model = model, .version = new_version, .round = x.round,
                            .params_json = x.params};
        ec_import_file f = {.fd = fd, .name = "snapshot.safetensors"};
        if ((rc = ec_import_files(cat, d->cfg.data_dir, &o, &f, 1, &ntensors)) < 0)
            goto out;
    }
    /* The tables' new bases. A failure here leaves the new version in
     * place and the old bases, which are still complete with the log. */
    for (size_t i = 0; i < x.n; i++) {
        struct dtab *t = x.ts[i].t;
        ec_cat_tensor nt = {0};
        char vbuf[32];
        ec_catalog_dyn rec;
        if (!t)
            continue;
        snprintf(vbuf, sizeof(vbuf), "%" PRId64, new_version);
        if ((rc = ec_catalog_resolve(cat, model, vbuf, t->name, &nt)) < 0)
            goto out;
        rec = (ec_catalog_dyn){.tensor_id = t->tensor, .capacity = t->capacity,
                               .policy = t->policy, .base_tensor_id = nt.id,
                               .base_lsn = t->lsn};
        ec_cat_tensor_clear(&nt);
        if ((rc = ec_catalog_dyn_put(cat, &rec)) < 0)
            goto out;
        t->base_tensor = rec.base_tensor_id;
        t->base_lsn = rec.base_lsn;
    }
    if (ec_wal_sync(d->wal) == 0 && ec_wal_gc(d->wal, gc_needed, d, &removed) < 0)
        ec_warn("snapshot: removing old log files: %s", ec_last_error());
    d->st.snapshots++;
    ec_info("snapshot of model '%s' version %" PRId64 " (%zu dynamic tensors) is version "
            "%" PRId64 "; %u log files removed", model, v, ndyn, new_version, removed);
    if (version_out)
        *version_out = new_version;
    rc = 0;
out:
    if (fd >= 0)
        close(fd);
    for (size_t i = 0; i < x.n; i++)
        free(x.ts[i].ct.part_checksums);
    free(x.ts);
    free(x.params);
    return rc;
}
