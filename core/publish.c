/*
 * publish.c - `embcache publish` and `embcache pull`: a model version's
 * partitions to a Redis Cluster, and from there into another host's data
 * directory and catalog (the layout on the cluster and the invariants are
 * in publish.h).
 *
 * Publish reads each tensor's partition file partition by partition, each
 * checked against the catalog's checksum (ec_partfile_read_partition, as
 * the snapshot does), cuts the partitions into chunks of at most 1 MiB and
 * sends them with pipelined MSETs of about 64 MiB, then SETs the manifest.
 *
 * Pull GETs the manifest and validates all of it (magic, format, its own
 * checksum, every size and count, names, dtypes, the shape's arithmetic,
 * the partition lengths, the room on the data directory's file system),
 * MGETs each tensor's chunks in batches of about 64 MiB, checks each
 * reassembled partition against the manifest's XXH3-64, and writes the
 * tensors as one safetensors stream into an unlinked file in the data
 * directory, which ec_import_files imports with a partition size that cuts
 * the partitions the manifest has. Then the catalog's partition checksums
 * must equal the manifest's, else the version is dropped again.
 *
 * The lazy pull, and its check for `embcache recover`, are in
 * core/pull_lazy.c; what both share is in core/publish_impl.h.
 *
 * Runs on the daemon's importer thread (core/server_remote.c) with the
 * importer's catalog handle; the cluster handle is this call's own.
 */
#include "core/publish.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/import.h"
#include "core/partfile.h"
#include "core/proto.h"
#include "core/publish_impl.h"
#include "core/rcluster.h"
#include "core/tensorfile.h"

/* The thread's last message, copied: ec_seterr must not format from its
 * own buffer. Returns buf. */
const char *pub_saved_err(char *buf)
{
    snprintf(buf, EC_ERRMSG_MAX, "%s", ec_last_error());
    return buf;
}

/* A version number: decimal, >= 1, the whole string. */
int pub_parse_version(const char *s, int64_t *out)
{
    char *end;
    long long v;

    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < 1 || s[0] == '+' || s[0] == ' ')
        return -1;
    *out = v;
    return 0;
}

void pub_manifest_free(struct manifest *m)
{
    for (uint32_t i = 0; m->t && i < m->n; i++)
        free(m->t[i].len);
    free(m->t);
    free(m->params);
    memset(m, 0, sizeof(*m));
}

int pub_open_cluster(const char *url, ec_rcluster **out)
{
    char eb[EC_ERRMSG_MAX];
    ec_rcluster_opts o = {.op_timeout_ms = 10000, .max_value_bytes = EC_PUB_MANIFEST_MAX};
    int rc = ec_rcluster_open(url, &o, out);

    if (rc)
        return ec_seterr(rc, "cluster %s: %s", url, pub_saved_err(eb));
    return 0;
}

size_t pub_manifest_key(char *buf, const char *model, int64_t v)
{
    return (size_t)snprintf(buf, PUB_KEY_MAX, "ec:m:%s:%" PRId64, model, v);
}

size_t pub_head_key(char *buf, const char *model, int64_t v, uint32_t t, uint64_t k)
{
    return (size_t)snprintf(buf, PUB_KEY_MAX, "ec:h:%s:%" PRId64 ":%u:%" PRIu64, model, v, t, k);
}

size_t pub_chunk_key(char *buf, const char *model, int64_t v, uint32_t t, uint64_t p,
                     uint64_t k)
{
    return (size_t)snprintf(buf, PUB_KEY_MAX, "ec:c:%s:%" PRId64 ":%u:%" PRIu64 ":%" PRIu64, model,
                            v, t, p, k);
}

uint64_t pub_nchunks(uint64_t len, uint32_t chunk)
{
    return len / chunk + (len % chunk != 0);
}

/* ------------------------------------------------------------------ */
/* The manifest's bytes                                                */

struct obuf {
    uint8_t *b;
    size_t len, cap;
    int err;
};

static void put(struct obuf *o, const void *p, size_t n)
{
    if (o->err)
        return;
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap * 2 : 4096;
        while (cap < o->len + n)
            cap *= 2;
        uint8_t *nb = realloc(o->b, cap);
        if (!nb) {
            o->err = EC_ENOMEM;
            return;
        }
        o->b = nb;
        o->cap = cap;
    }
    memcpy(o->b + o->len, p, n);
    o->len += n;
}

static void put64(struct obuf *o, uint64_t v)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put(o, b, 8);
}

static void put32(struct obuf *o, uint32_t v)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put(o, b, 4);
}

static void putstr(struct obuf *o, const char *s)
{
    put32(o, (uint32_t)strlen(s));
    put(o, s, strlen(s));
}

static int manifest_encode(const struct manifest *m, struct obuf *o)
{
    put(o, PUB_MAGIC, 8);
    put32(o, PUB_FORMAT);
    put32(o, m->n);
    putstr(o, m->model);
    put64(o, (uint64_t)m->version);
    put64(o, (uint64_t)m->round);
    put64(o, (uint64_t)m->created);
    putstr(o, m->params ? m->params : "{}");
    put32(o, m->chunk);
    for (uint32_t i = 0; i < m->n; i++) {
        const struct ptensor *t = &m->t[i];
        putstr(o, t->name);
        put32(o, (uint32_t)t->dtype);
        put32(o, t->ndim);
        for (uint32_t d = 0; d < t->ndim; d++)
            put64(o, t->shape[d]);
        put64(o, t->rows);
        put64(o, t->row_bytes);
        put64(o, t->rpp);
        put64(o, t->partitions);
        for (uint64_t p = 0; p < t->partitions; p++) {
            put64(o, t->len[p]);
            put64(o, t->sum[p]);
        }
        put64(o, t->head_len);
        put64(o, t->head_sum);
    }
    if (!o->err)
        put64(o, ec_checksum(o->b, o->len));
    return o->err ? ec_seterr(o->err, "building the manifest") : 0;
}

struct ibuf {
    const uint8_t *b;
    size_t len, off;
    bool bad;
};

static const uint8_t *take(struct ibuf *r, size_t n)
{
    const uint8_t *p;

    if (r->bad || n > r->len - r->off) {
        r->bad = true;
        return NULL;
    }
    p = r->b + r->off;
    r->off += n;
    return p;
}

static uint64_t get64(struct ibuf *r)
{
    const uint8_t *p = take(r, 8);
    uint64_t v = 0;
    for (int i = 0; p && i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static uint32_t get32(struct ibuf *r)
{
    const uint8_t *p = take(r, 4);
    uint32_t v = 0;
    for (int i = 0; p && i < 4; i++)
        v |= (uint32_t)p[i] << (8 * i);
    return v;
}

/* A string of at most cap - 1 bytes, no NUL in it. */
static bool getstr(struct ibuf *r, char *dst, size_t cap)
{
    uint32_t n = get32(r);
    const uint8_t *p;

    if (r->bad || n >= cap || !(p = take(r, n)) || memchr(p, 0, n))
        return r->bad = true, false;
    memcpy(dst, p, n);
    dst[n] = 0;
    return true;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const struct ptensor *const *)a)->name,
                  (*(const struct ptensor *const *)b)->name);
}

/* Check one tensor of a manifest: name, dtype, the shape's arithmetic,
 * the partition counts and lengths. Adds its bytes to *total. 0 or
 * EC_EFORMAT. */
static int tensor_check(const struct ptensor *t, uint64_t *total)
{
    char eb[EC_ERRMSG_MAX];
    size_t es = ec_dtype_size(t->dtype);
    uint64_t rb = es, rows, parts;

    if (ec_catalog_check_name("tensor", t->name))
        return ec_seterr(EC_EFORMAT, "manifest: tensor name: %s", pub_saved_err(eb));
    if (!es || !ec_safetensors_dtype_name(t->dtype))
        return ec_seterr(EC_EFORMAT, "manifest: tensor '%s' has dtype %u, which embcache "
                         "cannot import", t->name, (unsigned)t->dtype);
    for (uint32_t d = 1; d < t->ndim; d++)
        if (__builtin_mul_overflow(rb, t->shape[d], &rb))
            return ec_seterr(EC_EFORMAT, "manifest: tensor '%s': its shape overflows",
                             t->name);
    rows = t->ndim ? t->shape[0] : 1;
    if (t->rows != rows || t->row_bytes != rb || rb > UINT32_MAX)
        return ec_seterr(EC_EFORMAT, "manifest: tensor '%s': rows %" PRIu64 " and row_bytes %"
                         PRIu64 " do not follow from its shape and dtype", t->name, t->rows,
                         t->row_bytes);
    if (t->rpp == 0 || t->rpp > (rows ? rows : 1) ||
        (t->rpp > 1 && t->rpp > UINT32_MAX / (rb ? rb : 1)))
        return ec_seterr(EC_EFORMAT, "manifest: tensor '%s': %" PRIu64 " rows per partition "
                         "of %" PRIu64 " rows of %" PRIu64 " bytes (a partition is at most %u "
                         "bytes)", t->name, t->rpp, rows, rb, UINT32_MAX);
    parts = rows / t->rpp + (rows % t->rpp != 0);
    if (t->partitions != parts)
        return ec_seterr(EC_EFORMAT, "manifest: tensor '%s': %" PRIu64 " partitions, and its "
                         "rows make %" PRIu64, t->name, t->partitions, parts);
    for (uint64_t p = 0; p < parts; p++) {
        uint64_t r = p + 1 < parts ? t->rpp : rows - p * t->rpp;
        if (t->len[p] != r * rb)
            return ec_seterr(EC_EFORMAT, "manifest: tensor '%s' partition %" PRIu64 ": %"
                             PRIu64 " bytes, and its rows make %" PRIu64, t->name, p,
                             t->len[p], r * rb);
        if (__builtin_add_overflow(*total, t->len[p], total))
            return ec_seterr(EC_EFORMAT, "manifest: its total size overflows");
    }
    return 0;
}

/* The partition file layout a manifest's tensor has, as version v of the
 * format (EC_PARTFILE_VERSION_1 or 0: the current one). */
int pub_tensor_layout(const struct ptensor *t, uint32_t v, ec_partfile_meta *meta)
{
    memset(meta, 0, sizeof(*meta));
    meta->version = v;
    meta->dtype = t->dtype;
    meta->ndim = t->ndim;
    memcpy(meta->shape, t->shape, sizeof(meta->shape));
    meta->rows_per_partition = t->rpp;
    return ec_partfile_layout(meta);
}

/* Format 2: a file head is exactly as long as the layout of either file
 * format makes it (which also bounds what a lazy pull allocates). */
static int head_check(const struct manifest *m, const struct ptensor *t)
{
    ec_partfile_meta v1, v2;

    if (m->format < PUB_FORMAT)
        return 0;
    if (pub_tensor_layout(t, EC_PARTFILE_VERSION_1, &v1) || pub_tensor_layout(t, 0, &v2) ||
        (t->head_len != v1.data_off && t->head_len != v2.data_off))
        return ec_seterr(EC_EFORMAT, "manifest: tensor '%s': a file head of %" PRIu64 " bytes, "
                         "and its layout makes %" PRIu64 " (or %" PRIu64 " in format 1)",
                         t->name, t->head_len, v2.data_off, v1.data_off);
    return 0;
}

/* Decode and validate a manifest from another host. *total: tensor bytes. */
int pub_manifest_decode(const uint8_t *b, size_t len, const char *model, int64_t version,
                        struct manifest *m, uint64_t *total)
{
    struct ibuf r = {.b = b, .len = len};
    struct ptensor **byname = NULL;
    uint32_t plen;
    int rc = 0;

    memset(m, 0, sizeof(*m));
    *total = 0;
    if (len < 8 + 8 || memcmp(b, PUB_MAGIC, 8))
        return ec_seterr(EC_EFORMAT, "manifest of '%s' version %" PRId64 " on the cluster is "
                         "not an embcache manifest (bad magic): publish it again", model,
                         version);
    if (ec_checksum(b, len - 8) != (r.off = len - 8, get64(&r)))
        return ec_seterr(EC_EFORMAT, "manifest of '%s' version %" PRId64 " failed its "
                         "checksum: publish it again", model, version);
    r = (struct ibuf){.b = b, .len = len - 8, .off = 8};
    m->format = get32(&r);
    if (m->format != PUB_FORMAT && m->format != PUB_FORMAT_1)
        return ec_seterr(EC_EVERSION, "manifest of '%s' version %" PRId64 ": format %u, this "
                         "embcache reads formats %u and %u", model, version, m->format,
                         PUB_FORMAT_1, PUB_FORMAT);
    m->n = get32(&r);
    if (r.bad || m->n == 0 || m->n > EC_PUB_MAX_TENSORS)
        return ec_seterr(EC_EFORMAT, "manifest of '%s' version %" PRId64 ": %u tensors "
                         "(1..%u)", model, version, m->n, EC_PUB_MAX_TENSORS);
    if (!getstr(&r, m->model, sizeof(m->model)) || strcmp(m->model, model)) {
        rc = ec_seterr(EC_EFORMAT, "manifest under '%s' version %" PRId64 " names another "
                       "model", model, version);
        goto fail;
    }
    m->version = (int64_t)get64(&r);
    m->round = (int64_t)get64(&r);
    m->created = (int64_t)get64(&r);
    plen = get32(&r);
    if (r.bad || m->version != version || m->round < -1 || m->created < 0 ||
        plen > EC_PARAMS_MAX) {
        rc = ec_seterr(EC_EFORMAT, "manifest of '%s' version %" PRId64 ": bad version, round, "
                       "time or params length", model, version);
        goto fail;
    }
    r.off -= 4;
    if (!(m->params = malloc((size_t)plen + 1)) || !getstr(&r, m->params, (size_t)plen + 1)) {
        rc = m->params ? ec_seterr(EC_EFORMAT, "manifest: bad params") : ec_seterr(EC_ENOMEM,
                                                                                   "manifest");
        goto fail;
    }
    m->chunk = get32(&r);
    if (r.bad || m->chunk < EC_PUB_CHUNK_MIN || m->chunk > EC_PUB_BATCH_BYTES) {
        rc = ec_seterr(EC_EFORMAT, "manifest: chunk size %u (%u..%llu)", m->chunk,
                       EC_PUB_CHUNK_MIN, (unsigned long long)EC_PUB_BATCH_BYTES);
        goto fail;
    }
    if (!(m->t = calloc(m->n, sizeof(*m->t))) || !(byname = malloc(m->n * sizeof(*byname)))) {
        rc = ec_seterr(EC_ENOMEM, "manifest");
        goto fail;
    }
    for (uint32_t i = 0; i < m->n; i++) {
        struct ptensor *t = &m->t[i];
        byname[i] = t;
        if (!getstr(&r, t->name, sizeof(t->name)))
            break;
        t->dtype = (ec_dtype)get32(&r);
        t->ndim = get32(&r);
        if (r.bad || t->ndim > EC_MAX_DIMS) {
            r.bad = true;
            break;
        }
        for (uint32_t d = 0; d < t->ndim; d++)
            t->shape[d] = get64(&r);
        t->rows = get64(&r);
        t->row_bytes = get64(&r);
        t->rpp = get64(&r);
        t->partitions = get64(&r);
        /* 16 bytes a partition must still be there: bounds the allocation. */
        if (r.bad || t->partitions > (r.len - r.off) / 16 || t->partitions > UINT32_MAX) {
            r.bad = true;
            break;
        }
        if (!(t->len = malloc((t->partitions ? t->partitions : 1) * 16))) {
            rc = ec_seterr(EC_ENOMEM, "manifest");
            goto fail;
        }
        t->sum = t->len + t->partitions;
        for (uint64_t p = 0; p < t->partitions; p++) {
            t->len[p] = get64(&r);
            t->sum[p] = get64(&r);
        }
        if (m->format >= PUB_FORMAT) {
            t->head_len = get64(&r);
            t->head_sum = get64(&r);
        }
        if (r.bad)
            break;
        if ((rc = tensor_check(t, total)) || (rc = head_check(m, t)))
            goto fail;
    }
    if (r.bad || r.off != r.len) {
        rc = ec_seterr(EC_EFORMAT, "manifest of '%s' version %" PRId64 ": truncated or with "
                       "bytes after its last tensor", model, version);
        goto fail;
    }
    qsort(byname, m->n, sizeof(*byname), cmp_name);
    for (uint32_t i = 1; i < m->n; i++)
        if (!strcmp(byname[i - 1]->name, byname[i]->name)) {
            rc = ec_seterr(EC_EFORMAT, "manifest: tensor '%s' twice", byname[i]->name);
            goto fail;
        }
    free(byname);
    return 0;
fail:
    assert(rc < 0);
    free(byname);
    pub_manifest_free(m);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Publish                                                             */

struct collect {
    int64_t version, version_id;
    struct manifest *m;
    uint32_t cap;
    int64_t *ids;
    bool dynamic;
    char dyn_name[EC_NAME_MAX + 1];
};

static int note_version(const ec_cat_version *v, void *arg)
{
    struct collect *x = arg;

    if (v->version != x->version)
        return 0;
    x->version_id = v->id;
    x->m->round = v->round;
    x->m->created = v->created_unix;
    free(x->m->params);
    if (!(x->m->params = strdup(v->params_json ? v->params_json : "{}")))
        return ec_seterr(EC_ENOMEM, "publish");
    return 0;
}

static int note_tensor(const ec_cat_tensor *ct, void *arg)
{
    struct collect *x = arg;
    struct manifest *m = x->m;
    struct ptensor *t;

    if (m->n == x->cap) {
        uint32_t cap = x->cap ? x->cap * 2 : 8;
        struct ptensor *nt = realloc(m->t, cap * sizeof(*nt));
        int64_t *ni;
        if (!nt)
            return ec_seterr(EC_ENOMEM, "publish");
        m->t = nt;
        if (!(ni = realloc(x->ids, cap * sizeof(*ni))))
            return ec_seterr(EC_ENOMEM, "publish");
        x->ids = ni;
        x->cap = cap;
    }
    t = &m->t[m->n];
    memset(t, 0, sizeof(*t));
    if (!(t->len = malloc((ct->partitions ? ct->partitions : 1) * 16)))
        return ec_seterr(EC_ENOMEM, "publish");
    m->n++;
    t->sum = t->len + ct->partitions;
    snprintf(t->name, sizeof(t->name), "%s", ct->name);
    snprintf(t->path, sizeof(t->path), "%s", ct->path);
    t->dtype = ct->dtype;
    t->ndim = ct->ndim;
    memcpy(t->shape, ct->shape, sizeof(t->shape));
    t->rows = ct->rows;
    t->row_bytes = ct->row_bytes;
    t->rpp = ct->rows_per_partition;
    t->partitions = ct->partitions;
    t->lazy = ct->remote;
    memcpy(t->sum, ct->part_checksums, ct->partitions * 8);
    x->ids[m->n - 1] = ct->id;
    return 0;
}

static int note_dyn(const ec_catalog_dyn *d, void *arg)
{
    struct collect *x = arg;

    for (uint32_t i = 0; i < x->m->n; i++)
        if (x->ids[i] == d->tensor_id) {
            x->dynamic = true;
            snprintf(x->dyn_name, sizeof(x->dyn_name), "%s", x->m->t[i].name);
        }
    return 0;
}

/* Keys and values waiting for one MSET; the values live in arena. */
struct batch {
    char **keys;
    size_t *klen;
    const void **vals;
    size_t *vlen;
    size_t n, cap;
    uint8_t *arena;
    uint64_t used, arena_cap;
    uint64_t head_used;  /* of used, file heads: not counted as tensor bytes */
};

static int batch_flush(ec_rcluster *rc, struct batch *b, uint64_t *sent)
{
    int r = 0;

    if (b->n)
        r = ec_rcluster_mset(rc, (const char *const *)b->keys, b->klen,
                             (const void *const *)b->vals, b->vlen, b->n, NULL, NULL, NULL);
    for (size_t i = 0; i < b->n; i++)
        free(b->keys[i]);
    if (r == 0)
        *sent += b->used - b->head_used;
    b->n = 0;
    b->used = 0;
    b->head_used = 0;
    return r;
}

static int batch_key(struct batch *b, const char *key, size_t klen, const void *v, size_t vlen)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        char **k = realloc(b->keys, cap * sizeof(*k));
        size_t *kl = k ? realloc(b->klen, cap * sizeof(*kl)) : NULL;
        const void **vs = kl ? realloc(b->vals, cap * sizeof(*vs)) : NULL;
        size_t *vl = vs ? realloc(b->vlen, cap * sizeof(*vl)) : NULL;
        if (k)
            b->keys = k;
        if (kl)
            b->klen = kl;
        if (vs)
            b->vals = vs;
        if (!vl)
            return ec_seterr(EC_ENOMEM, "publish batch");
        b->vlen = vl;
        b->cap = cap;
    }
    if (!(b->keys[b->n] = malloc(klen + 1)))
        return ec_seterr(EC_ENOMEM, "publish batch");
    memcpy(b->keys[b->n], key, klen + 1);
    b->klen[b->n] = klen;
    b->vals[b->n] = v;
    b->vlen[b->n] = vlen;
    b->n++;
    return 0;
}

/* Room for n more bytes at the end of the batch's arena, the batch sent
 * first when they do not fit there: *dst. what names the value for an
 * out-of-memory message. */
static int batch_room(ec_rcluster *rc, struct batch *b, uint64_t n, uint64_t *sent,
                      const char *what, uint8_t **dst)
{
    int r;

    if (b->used + n > b->arena_cap && (r = batch_flush(rc, b, sent)))
        return r;
    if (n > b->arena_cap) {
        uint8_t *na = realloc(b->arena, n);
        if (!na)
            return ec_seterr(EC_ENOMEM, "publish: %s of %" PRIu64 " bytes", what, n);
        b->arena = na;
        b->arena_cap = n;
    }
    *dst = b->arena + b->used;
    return 0;
}

/* Queue len bytes at src (in the arena) as chunks of m->chunk bytes: those
 * of tensor ti's partition p, or of its file head when p is UINT64_MAX. */
static int batch_chunks(struct batch *b, const struct manifest *m, uint32_t ti, uint64_t p,
                        const uint8_t *src, uint64_t len)
{
    char key[PUB_KEY_MAX];
    int r;

    for (uint64_t k = 0, nk = pub_nchunks(len, m->chunk); k < nk; k++) {
        uint64_t off = k * m->chunk, n = len - off < m->chunk ? len - off : m->chunk;
        size_t kl = p == UINT64_MAX ? pub_head_key(key, m->model, m->version, ti, k)
                                    : pub_chunk_key(key, m->model, m->version, ti, p, k);
        if ((r = batch_key(b, key, kl, src + off, (size_t)n)))
            return r;
    }
    return 0;
}


/* Read, check and queue every partition of tensor ti. */
static int publish_tensor(ec_rcluster *rc, const char *data_dir, struct manifest *m,
                          uint32_t ti, struct batch *b, uint64_t *sent)
{
    char eb[EC_ERRMSG_MAX];
    struct ptensor *t = &m->t[ti];
    char path[4096 + EC_CAT_PATH_MAX + 2];
    ec_partfile_meta meta;
    int fd = -1, r;

    snprintf(path, sizeof(path), "%s/%s", data_dir, t->path);
    if ((r = ec_partfile_open(path, &meta, &fd)) < 0)
        return ec_seterr(r, "publish of '%s' version %" PRId64 " tensor '%s': %s", m->model,
                         m->version, t->name, pub_saved_err(eb));
    if (meta.partitions != t->partitions || meta.rows_per_partition != t->rpp) {
        r = ec_seterr(EC_ECORRUPT, "publish: the partition file of tensor '%s' does not match "
                      "the catalog; run `embcache refresh`", t->name);
        goto out;
    }
    for (uint64_t p = 0; p < t->partitions; p++) {
        uint64_t plen = ec_partfile_part_length(&meta, p);
        uint8_t *dst = NULL;
        /* A lazily pulled tensor's partitions reach its file as they are
         * read: one not read yet is a hole, which would read as zeros and
         * fail its checksum as if the disk were damaged. */
        if (t->lazy && !ec_partfile_range_on_disk(fd, ec_partfile_part_offset(&meta, p), plen)) {
            r = ec_seterr(EC_EINVAL, "publish of '%s' version %" PRId64 ": it was pulled "
                          "lazily here, and partition %" PRIu64 " of tensor '%s' is not on "
                          "this host's disk yet (it is read from the remote tier when it is "
                          "first used): publish it from a host that holds it whole, or pull "
                          "it whole here first (`embcache pull` without --lazy, after "
                          "`embcache retire`)", m->model, m->version, p, t->name);
            goto out;
        }
        if ((r = batch_room(rc, b, plen, sent, "a partition", &dst)))
            goto out;
        if ((r = ec_partfile_read_partition(fd, &meta, p, dst, t->sum[p])) < 0) {
            r = ec_seterr(r, "publish of '%s' version %" PRId64 " tensor '%s' partition %"
                          PRIu64 ": %s", m->model, m->version, t->name, p, pub_saved_err(eb));
            goto out;
        }
        if (ec_checksum(dst, plen) != t->sum[p]) {
            r = ec_seterr(EC_EINTERNAL, "publish: tensor '%s' partition %" PRIu64 ": the "
                          "catalog's checksum is not the XXH3-64 of its bytes", t->name, p);
            goto out;
        }
        t->len[p] = plen;
        b->used += plen;
        if ((r = batch_chunks(b, m, ti, p, dst, plen)))
            goto out;
    }
    /* The file's head (header page, partition table, block table), for a
     * lazy pull: ec_partfile_open validated it above, the puller validates
     * it again. */
    {
        uint64_t hl = meta.data_off, got = 0;
        uint8_t *dst = NULL;
        if ((r = batch_room(rc, b, hl, sent, "a file head", &dst)))
            goto out;
        while (got < hl) {
            ssize_t n = pread(fd, dst + got, hl - got, (off_t)got);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                r = ec_seterr_errno(EC_EIO, n < 0 ? errno : EIO, "publish: reading the head "
                                    "of %s", path);
                goto out;
            }
            got += (uint64_t)n;
        }
        t->head_len = hl;
        t->head_sum = ec_checksum(dst, hl);
        b->used += hl;
        b->head_used += hl;
        if ((r = batch_chunks(b, m, ti, UINT64_MAX, dst, hl)))
            goto out;
    }
    r = 0;
out:
    close(fd);
    return r;
}

/* The manifest of m's version already on the cluster, if any, decoded:
 * after the new one is in place, the keys it names and the new one does
 * not are deleted. One that cannot be read or fails validation names
 * nothing to delete (a warning says so), and never stops the publish,
 * which is how such a manifest is replaced. */
static void earlier_manifest(ec_rcluster *rc, const struct manifest *m, const char *url,
                             struct manifest *old, bool *had)
{
    char eb[EC_ERRMSG_MAX], key[PUB_KEY_MAX];
    size_t kl = pub_manifest_key(key, m->model, m->version);
    uint64_t total;
    void *mb = NULL;
    size_t len = 0;
    int r = ec_rcluster_get(rc, key, kl, &mb, &len);

    *had = false;
    if (r == EC_ENOENT)
        return;
    if (r) {
        ec_warn("publish of %s version %" PRId64 " to %s: the manifest there could not be "
                "read (%s); it is replaced, and keys of that earlier publish that this one "
                "does not write over are left", m->model, m->version, url, pub_saved_err(eb));
        return;
    }
    if (pub_manifest_decode(mb, len, m->model, m->version, old, &total) == 0)
        *had = true;
    else
        ec_warn("publish of %s version %" PRId64 " to %s: the manifest there fails validation "
                "(%s); it is replaced, and keys of that earlier publish that this one does "
                "not write over are left", m->model, m->version, url, pub_saved_err(eb));
    free(mb);
}

int ec_publish_version(ec_catalog *cat, const char *data_dir, const char *model,
                       const char *version, const char *url, ec_pub_stats *out)
{
    char eb[EC_ERRMSG_MAX];
    struct manifest m = {.chunk = EC_PUB_CHUNK_BYTES, .format = PUB_FORMAT}, old = {0};
    struct collect x = {.m = &m, .version_id = -1};
    bool had_old = false;
    struct batch b = {0};
    struct obuf o = {0};
    ec_rcluster *rc = NULL;
    uint64_t sent = 0;
    char key[PUB_KEY_MAX];
    size_t kl;
    int r;

    if ((r = ec_catalog_version_of(cat, model, version, &x.version)) < 0)
        return r;
    snprintf(m.model, sizeof(m.model), "%s", model);
    m.version = x.version;
    if ((r = ec_catalog_list_versions(cat, model, note_version, &x)) < 0)
        goto out;
    if (x.version_id < 0) {
        r = ec_seterr(EC_ENOENT, "model '%s' version %s: gone while it was published", model,
                      version);
        goto out;
    }
    if ((r = ec_catalog_list_tensors(cat, x.version_id, note_tensor, &x)) < 0 ||
        (r = ec_catalog_dyn_each(cat, note_dyn, &x)) < 0)
        goto out;
    if (x.dynamic) {
        r = ec_seterr(EC_EINVAL, "model '%s' version %" PRId64 ": tensor '%s' is a dynamic "
                      "table; publish a snapshot of it (`embcache snapshot`)", model,
                      m.version, x.dyn_name);
        goto out;
    }
    for (uint32_t i = 0; i < m.n; i++)
        if (!ec_safetensors_dtype_name(m.t[i].dtype)) {
            r = ec_seterr(EC_EDTYPE, "tensor '%s' has a dtype a pull cannot import",
                          m.t[i].name);
            goto out;
        }
    if ((r = pub_open_cluster(url, &rc)))
        goto out;
    earlier_manifest(rc, &m, url, &old, &had_old);
    b.arena_cap = EC_PUB_BATCH_BYTES;
    if (!(b.arena = malloc(b.arena_cap))) {
        r = ec_seterr(EC_ENOMEM, "publish buffer");
        goto out;
    }
    for (uint32_t i = 0; i < m.n; i++)
        if ((r = publish_tensor(rc, data_dir, &m, i, &b, &sent)))
            goto out;
    if ((r = batch_flush(rc, &b, &sent)))
        goto out;
    /* Last: a reader never sees a manifest whose chunks are not there. */
    if ((r = manifest_encode(&m, &o)))
        goto out;
    kl = pub_manifest_key(key, model, m.version);
    if ((r = ec_rcluster_set(rc, key, kl, o.b, o.len, NULL)))
        goto out;
    ec_info("published %s version %" PRId64 ": %u tensor(s), %" PRIu64 " bytes to %s", model,
            m.version, m.n, sent, url);
    if (had_old) { /* what the earlier publish wrote and this one did not */
        uint64_t gone = 0;
        if (pub_drop_keys(rc, &old, &m, &gone))
            ec_warn("publish of %s version %" PRId64 " to %s: deleting the keys of its earlier "
                    "publish that are no longer used failed after %" PRIu64 ": %s (unpublish "
                    "and publish it again to remove them)", model, m.version, url, gone,
                    pub_saved_err(eb));
        else if (gone)
            ec_info("published %s version %" PRId64 ": %" PRIu64 " key(s) of its earlier "
                    "publish deleted from %s", model, m.version, gone, url);
    }
    if (out)
        *out = (ec_pub_stats){.version = m.version, .tensors = m.n, .bytes = sent};
out:
    if (r && b.n) {
        for (size_t i = 0; i < b.n; i++)
            free(b.keys[i]);
    }
    if (r && r != EC_ENOENT && rc)
        r = ec_seterr(r, "publish of '%s' version %s to %s failed, and the version there (if "
                      "any) keeps its old manifest: %s", model, version, url, pub_saved_err(eb));
    ec_rcluster_close(rc);
    free(b.keys);
    free(b.klen);
    free(b.vals);
    free(b.vlen);
    free(b.arena);
    free(o.b);
    free(x.ids);
    pub_manifest_free(&m);
    pub_manifest_free(&old);
    return r;
}

/* ------------------------------------------------------------------ */
/* Pull                                                                */

/* The outcome of one MGET: where each key's value goes. */
struct fetch {
    const struct manifest *m;
    uint32_t ti;
    uint8_t **dst;
    size_t *want;
    uint64_t *part, *chunk;
    int err;
    size_t err_key;
    char msg[512];
};

static void fetch_cb(void *arg, size_t i, int status, const void *val, size_t len,
                     const char *msg)
{
    struct fetch *f = arg;
    const char *tn = f->m->t[f->ti].name;

    if (status == 0 && len == f->want[i]) {
        memcpy(f->dst[i], val, len);
        return;
    }
    if (f->err)
        return;
    f->err_key = i;
    if (status == 0) {
        f->err = EC_ECHECKSUM;
        snprintf(f->msg, sizeof(f->msg), "tensor '%s' partition %" PRIu64 " chunk %" PRIu64
                 ": %zu bytes on the cluster, the manifest makes %zu", tn, f->part[i],
                 f->chunk[i], len, f->want[i]);
    } else if (status == EC_ENOENT) {
        f->err = EC_ECHECKSUM;
        snprintf(f->msg, sizeof(f->msg), "tensor '%s' partition %" PRIu64 " chunk %" PRIu64
                 " is missing on the cluster", tn, f->part[i], f->chunk[i]);
    } else {
        f->err = status;
        snprintf(f->msg, sizeof(f->msg), "tensor '%s' partition %" PRIu64 " chunk %" PRIu64
                 ": %s", tn, f->part[i], f->chunk[i], msg ? msg : ec_strerror(status));
    }
}

static int write_all(int fd, const void *p, size_t n)
{
    return ec_import_write(fd, p, n, "a pulled version into the data directory");
}

/* The safetensors header of the manifest's tensors, in its order. */
static int write_header(int fd, const struct manifest *m)
{
    struct obuf o = {0};
    uint64_t off = 0, hlen;
    char tmp[256];
    int r;

    put(&o, "{", 1);
    for (uint32_t i = 0; i < m->n; i++) {
        const struct ptensor *t = &m->t[i];
        uint64_t bytes = t->rows * t->row_bytes;
        int k = snprintf(tmp, sizeof(tmp), "%s\"", i ? "," : "");
        put(&o, tmp, (size_t)k);
        put(&o, t->name, strlen(t->name));
        k = snprintf(tmp, sizeof(tmp), "\":{\"dtype\":\"%s\",\"shape\":[",
                     ec_safetensors_dtype_name(t->dtype));
        put(&o, tmp, (size_t)k);
        for (uint32_t d = 0; d < t->ndim; d++) {
            k = snprintf(tmp, sizeof(tmp), "%s%" PRIu64, d ? "," : "", t->shape[d]);
            put(&o, tmp, (size_t)k);
        }
        k = snprintf(tmp, sizeof(tmp), "],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}", off,
                     off + bytes);
        put(&o, tmp, (size_t)k);
        off += bytes;
    }
    put(&o, "}", 1);
    while (!o.err && o.len % 8)
        put(&o, " ", 1);
    if (o.err) {
        free(o.b);
        return ec_seterr(EC_ENOMEM, "pull: safetensors header");
    }
    hlen = o.len;
    if ((r = write_all(fd, &hlen, 8)) == 0)
        r = write_all(fd, o.b, o.len);
    free(o.b);
    return r;
}

/* Fetch, check and write every partition of tensor ti. */
static int pull_tensor(ec_rcluster *rc, const struct manifest *m, uint32_t ti, int fd,
                       uint8_t *arena, uint64_t arena_cap, uint64_t *got)
{
    const struct ptensor *t = &m->t[ti];
    struct fetch f = {.m = m, .ti = ti};
    char **keys = NULL;
    size_t *klen = NULL, cap = 0;
    int r = 0;

    for (uint64_t p0 = 0; p0 < t->partitions && r == 0;) {
        uint64_t p1 = p0, used = 0;
        size_t n = 0;
        /* Partitions p0..p1-1: at least one, at most arena_cap bytes and
         * EC_PUB_BATCH_KEYS chunks (one partition has at most that many:
         * 4 GiB / EC_PUB_CHUNK_MIN). */
        while (p1 < t->partitions &&
               (p1 == p0 || (used + t->len[p1] <= arena_cap &&
                             n + pub_nchunks(t->len[p1], m->chunk) <= EC_PUB_BATCH_KEYS))) {
            n += (size_t)pub_nchunks(t->len[p1], m->chunk);
            used += t->len[p1++];
        }
        if (n > cap) {
            free(keys);
            free(klen);
            free(f.dst);
            free(f.want);
            free(f.part);
            free(f.chunk);
            keys = calloc(n, sizeof(*keys));
            klen = malloc(n * sizeof(*klen));
            f.dst = malloc(n * sizeof(*f.dst));
            f.want = malloc(n * sizeof(*f.want));
            f.part = malloc(n * sizeof(*f.part));
            f.chunk = malloc(n * sizeof(*f.chunk));
            cap = n;
            if (!keys || !klen || !f.dst || !f.want || !f.part || !f.chunk) {
                cap = 0;
                r = ec_seterr(EC_ENOMEM, "pull: chunk keys");
                break;
            }
            for (size_t i = 0; i < n; i++)
                if (!(keys[i] = malloc(PUB_KEY_MAX))) {
                    r = ec_seterr(EC_ENOMEM, "pull: chunk keys");
                    break;
                }
            if (r)
                break;
        }
        {
            size_t i = 0;
            uint64_t off = 0;
            for (uint64_t p = p0; p < p1; p++) {
                for (uint64_t k = 0, nk = pub_nchunks(t->len[p], m->chunk); k < nk; k++, i++) {
                    uint64_t co = k * m->chunk;
                    klen[i] = pub_chunk_key(keys[i], m->model, m->version, ti, p, k);
                    f.dst[i] = arena + off + co;
                    f.want[i] = (size_t)(t->len[p] - co < m->chunk ? t->len[p] - co : m->chunk);
                    f.part[i] = p;
                    f.chunk[i] = k;
                }
                off += t->len[p];
            }
        }
        r = ec_rcluster_mget(rc, (const char *const *)keys, klen, n, fetch_cb, &f);
        if (f.err) {
            r = ec_seterr(f.err, "%s", f.msg);
            break;
        }
        if (r)
            break;
        {
            uint64_t off = 0;
            for (uint64_t p = p0; p < p1 && r == 0; p++) {
                if (ec_checksum(arena + off, t->len[p]) != t->sum[p])
                    r = ec_seterr(EC_ECHECKSUM, "tensor '%s' partition %" PRIu64 ": its "
                                  "bytes on the cluster fail the manifest's checksum "
                                  "(corrupted or overwritten there); publish the version "
                                  "again", t->name, p);
                off += t->len[p];
            }
        }
        if (r == 0 && (r = write_all(fd, arena, used)) == 0)
            *got += used;
        p0 = p1;
    }
    for (size_t i = 0; keys && i < cap; i++)
        free(keys[i]);
    free(keys);
    free(klen);
    free(f.dst);
    free(f.want);
    free(f.part);
    free(f.chunk);
    return r;
}

/* A partition size with which one import cuts every tensor as the
 * manifest says (ec_partfile_plan), or 0 when there is none. */
static uint64_t same_cut(const struct manifest *m)
{
    for (uint32_t c = 0; c < m->n; c++) {
        const uint64_t cands[3] = {m->t[c].rpp * m->t[c].row_bytes,
                                   m->t[c].rows * m->t[c].row_bytes, UINT32_MAX};
        for (int k = 0; k < 3; k++) {
            bool ok = cands[k] != 0;
            for (uint32_t i = 0; i < m->n && ok; i++) {
                uint64_t rpp;
                ok = ec_partfile_plan(m->t[i].rows, m->t[i].row_bytes, cands[k], &rpp) == 0 &&
                     (rpp == m->t[i].rpp || m->t[i].partitions == 0);
            }
            if (ok)
                return cands[k];
        }
    }
    return 0;
}

struct paths {
    const char *data_dir;
};

static int unlink_path(const char *path, void *arg)
{
    const struct paths *p = arg;
    char full[4096 + EC_CAT_PATH_MAX + 2];

    snprintf(full, sizeof(full), "%s/%s", p->data_dir, path);
    unlink(full);
    return 0;
}

/* After the import: the catalog's partitions are the manifest's. */
static int check_imported(ec_catalog *cat, const struct manifest *m)
{
    char vs[32];
    int r = 0;

    snprintf(vs, sizeof(vs), "%" PRId64, m->version);
    for (uint32_t i = 0; i < m->n && r == 0; i++) {
        const struct ptensor *t = &m->t[i];
        ec_cat_tensor ct = {0};
        if ((r = ec_catalog_resolve(cat, m->model, vs, t->name, &ct)))
            break;
        if (ct.partitions != t->partitions || ct.rows_per_partition != t->rpp ||
            ct.dtype != t->dtype || ct.rows != t->rows || ct.row_bytes != t->row_bytes)
            r = ec_seterr(EC_EFORMAT, "tensor '%s': imported as %" PRIu64 " partitions of %"
                          PRIu64 " rows, the manifest has %" PRIu64 " of %" PRIu64, t->name,
                          ct.partitions, ct.rows_per_partition, t->partitions, t->rpp);
        for (uint64_t p = 0; r == 0 && p < t->partitions; p++)
            if (ct.part_checksums[p] != t->sum[p])
                r = ec_seterr(EC_ECHECKSUM, "tensor '%s' partition %" PRIu64 ": imported with "
                              "checksum %016" PRIx64 ", the manifest says %016" PRIx64,
                              t->name, p, ct.part_checksums[p], t->sum[p]);
        ec_cat_tensor_clear(&ct);
    }
    return r;
}

/* The start of both pulls (and of recover's check): check the names,
 * refuse a version that exists in cat (when given), open the cluster (*rcp)
 * and read and decode the manifest (*mbp, for the caller to free, and m).
 * Fails before opening with *rcp NULL. */
int pub_pull_manifest(ec_catalog *cat, const char *model, const char *version,
                      const char *url, int64_t *vp, ec_rcluster **rcp, void **mbp,
                      struct manifest *m, uint64_t *total)
{
    char eb[EC_ERRMSG_MAX], key[PUB_KEY_MAX];
    ec_rcluster *rc = NULL;
    size_t mlen = 0, kl;
    int64_t v, have;
    int r;

    if ((r = ec_catalog_check_name("model", model)))
        return r;
    if (pub_parse_version(version, &v))
        return ec_seterr(EC_EINVAL, "pull: version '%s' must be a number >= 1 (an alias "
                         "names a version only on its own host)", version);
    if (cat && ec_catalog_version_of(cat, model, version, &have) == 0)
        return ec_seterr(EC_EEXIST, "model '%s' version %" PRId64 " exists here already; "
                         "retire it first to pull it again", model, v);
    *vp = v;
    if ((r = pub_open_cluster(url, &rc)))
        return r;
    *rcp = rc;
    kl = pub_manifest_key(key, model, v);
    if ((r = ec_rcluster_get(rc, key, kl, mbp, &mlen))) {
        if (r == EC_ENOENT)
            r = ec_seterr(EC_ENOENT, "model '%s' version %" PRId64 " is not published on %s "
                          "(no manifest): run `embcache publish %s %" PRId64 "` on its host",
                          model, v, url, model, v);
        else
            r = ec_seterr(r, "pull of '%s' version %" PRId64 ": reading its manifest from %s: "
                          "%s", model, v, url, pub_saved_err(eb));
        return r;
    }
    return pub_manifest_decode(*mbp, mlen, model, v, m, total);
}

int ec_pull_version(ec_catalog *cat, const char *data_dir, const char *model,
                    const char *version, const char *url, ec_pub_stats *out)
{
    char eb[EC_ERRMSG_MAX];
    struct manifest m = {0};
    ec_rcluster *rc = NULL;
    uint8_t *arena = NULL;
    void *mb = NULL;
    uint64_t total = 0, got = 0, target;
    int64_t v = 0;
    char tmpl[4200];
    struct statvfs sv;
    uint32_t ntensors = 0;
    bool imported = false;
    int fd = -1, r;

    if ((r = pub_pull_manifest(cat, model, version, url, &v, &rc, &mb, &m, &total))) {
        if (!rc)
            return r; /* nothing opened: the message says it all */
        goto out;
    }
    /* The temporary file and the partition files: twice its bytes. */
    if (statvfs(data_dir, &sv) == 0 && total > (uint64_t)sv.f_bavail * sv.f_frsize / 2) {
        r = ec_seterr(EC_ENOSPC, "pull of '%s' version %" PRId64 ": %" PRIu64 " bytes, twice "
                      "that while it is imported, and the data directory's file system has %"
                      PRIu64 " free", model, v, total,
                      (uint64_t)sv.f_bavail * sv.f_frsize);
        goto out;
    }
    if (!(target = same_cut(&m))) {
        r = ec_seterr(EC_EFORMAT, "pull of '%s' version %" PRId64 ": no import partition size "
                      "cuts its tensors as published", model, v);
        goto out;
    }
    snprintf(tmpl, sizeof(tmpl), "%s/pull-XXXXXX", data_dir);
    if ((fd = mkostemp(tmpl, O_CLOEXEC)) < 0) {
        r = ec_seterr_errno(EC_EIO, errno, "creating a file in the data directory for a pull");
        goto out;
    }
    unlink(tmpl);
    if (!(arena = malloc(EC_PUB_BATCH_BYTES))) {
        r = ec_seterr(EC_ENOMEM, "pull buffer");
        goto out;
    }
    if ((r = write_header(fd, &m)))
        goto out;
    for (uint32_t i = 0; i < m.n; i++) {
        uint64_t need = 0;
        for (uint64_t p = 0; p < m.t[i].partitions; p++)
            need = m.t[i].len[p] > need ? m.t[i].len[p] : need;
        if (need > EC_PUB_BATCH_BYTES) {
            uint8_t *na = realloc(arena, need);
            if (!na) {
                r = ec_seterr(EC_ENOMEM, "pull buffer of %" PRIu64 " bytes", need);
                goto out;
            }
            arena = na;
        }
        if ((r = pull_tensor(rc, &m, i, fd, arena, need > EC_PUB_BATCH_BYTES ? need
                                                                  : EC_PUB_BATCH_BYTES, &got)))
            goto out;
    }
    {
        ec_import_opts o = {.model = model, .version = v, .round = m.round,
                            .params_json = m.params, .partition_bytes = target};
        ec_import_file f = {.fd = fd, .name = "pull.safetensors"};
        if ((r = ec_import_files_at(cat, data_dir, &o, m.created, &f, 1, &ntensors)) < 0)
            goto out;
        imported = true;
    }
    if ((r = check_imported(cat, &m)))
        goto out;
    ec_info("pulled %s version %" PRId64 ": %u tensor(s), %" PRIu64 " bytes from %s", model, v,
            m.n, got, url);
    if (out)
        *out = (ec_pub_stats){.version = v, .tensors = m.n, .bytes = got};
out:
    if (r && imported) {
        struct paths pp = {.data_dir = data_dir};
        char saved[EC_ERRMSG_MAX];
        snprintf(saved, sizeof(saved), "%s", ec_last_error());
        if (ec_catalog_drop_version(cat, model, v, unlink_path, &pp))
            ec_warn("pull: dropping '%s' version %" PRId64 " again failed: %s", model, v,
                    ec_last_error());
        ec_seterr(r, "%s", saved);
    }
    if (r && r != EC_ENOENT && r != EC_EEXIST)
        r = ec_seterr(r, "pull of '%s' version %" PRId64 " from %s failed, nothing was "
                      "registered: %s", model, v, url, pub_saved_err(eb));
    if (fd >= 0)
        close(fd);
    free(arena);
    free(mb);
    ec_rcluster_close(rc);
    pub_manifest_free(&m);
    return r;
}
