/*
 * pull_lazy.c - `embcache pull --lazy`: register a published model version
 * with its data left on the cluster (the contract is in publish.h), and
 * the check that lets `embcache recover` register such a version again
 * from its partition files.
 *
 * A lazy pull GETs and validates the manifest as a whole pull does
 * (pub_pull_manifest, core/publish.c), then per tensor MGETs its file head
 * (bytes [0, data_off): header page, partition table, block table), checks
 * it against the manifest's XXH3-64, writes it as a new partition file
 * truncated to its full size (the data region one hole), opens it as any
 * partition file is opened and compares its table with the manifest's
 * checksums. The daemon's remote tier fills the holes as rows are read.
 *
 * Recover's check (ec_pull_lazy_match) reads the manifest only: a file
 * whose partitions are partly holes is registered as lazily pulled when
 * the version on the cluster has the same tensors, shapes, layout and
 * every partition's checksum, so every partition read later from the
 * cluster is the one the file's own table describes.
 *
 * Runs on the daemon's importer thread (core/server_remote.c), or in the
 * embcache CLI's process for recover; the cluster handle is the call's own.
 */
#include "core/publish.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "core/import.h"
#include "core/partfile.h"
#include "core/publish_impl.h"
#include "core/rcluster.h"

/* A value of a head's MGET, into its place. */
struct hfetch {
    const char *tensor;
    uint8_t *buf;
    uint64_t len;
    uint32_t chunk;
    int err;
    char msg[512];
};

static void head_cb(void *arg, size_t i, int status, const void *val, size_t len,
                    const char *msg)
{
    struct hfetch *f = arg;
    uint64_t off = (uint64_t)i * f->chunk;
    uint64_t want = f->len - off < f->chunk ? f->len - off : f->chunk;

    if (status == 0 && len == want) {
        memcpy(f->buf + off, val, len);
        return;
    }
    if (f->err)
        return;
    f->err = status == 0 || status == EC_ENOENT ? EC_ECHECKSUM : status;
    if (status == 0)
        snprintf(f->msg, sizeof(f->msg), "tensor '%s': chunk %zu of its file head has %zu "
                 "bytes on the cluster, the manifest makes %" PRIu64, f->tensor, i, len, want);
    else if (status == EC_ENOENT)
        snprintf(f->msg, sizeof(f->msg), "tensor '%s': chunk %zu of its file head is missing "
                 "on the cluster", f->tensor, i);
    else
        snprintf(f->msg, sizeof(f->msg), "tensor '%s': chunk %zu of its file head: %s",
                 f->tensor, i, msg ? msg : ec_strerror(status));
}

/* Fetch tensor ti's head and check it against the manifest's checksum.
 * *out is malloc'd (t->head_len bytes). */
static int fetch_head(ec_rcluster *rc, const struct manifest *m, uint32_t ti, uint8_t **out)
{
    const struct ptensor *t = &m->t[ti];
    size_t n = (size_t)pub_nchunks(t->head_len, m->chunk);
    struct hfetch f = {.tensor = t->name, .len = t->head_len, .chunk = m->chunk};
    char **keys = calloc(n, sizeof(*keys));
    size_t *klen = calloc(n, sizeof(*klen));
    int r = 0;

    f.buf = malloc(t->head_len);
    if (!keys || !klen || !f.buf) {
        r = ec_seterr(EC_ENOMEM, "lazy pull: a file head of %" PRIu64 " bytes", t->head_len);
        goto out;
    }
    for (size_t k = 0; k < n; k++) {
        if (!(keys[k] = malloc(PUB_KEY_MAX))) {
            r = ec_seterr(EC_ENOMEM, "lazy pull: keys");
            goto out;
        }
        klen[k] = pub_head_key(keys[k], m->model, m->version, ti, k);
    }
    r = ec_rcluster_mget(rc, (const char *const *)keys, klen, n, head_cb, &f);
    if (f.err)
        r = ec_seterr(f.err, "%s", f.msg);
    else if (r == 0 && ec_checksum(f.buf, t->head_len) != t->head_sum)
        r = ec_seterr(EC_ECHECKSUM, "tensor '%s': its file head on the cluster fails the "
                      "manifest's checksum (corrupted or overwritten there); publish the "
                      "version again", t->name);
out:
    for (size_t k = 0; keys && k < n; k++)
        free(keys[k]);
    free(keys);
    free(klen);
    if (r)
        free(f.buf);
    else
        *out = f.buf;
    return r;
}

/* Write a head as a new partition file, sparse to its full size, check it
 * as any partition file is opened, and against the manifest; then give it
 * its final name. rel: "parts/<name>.ecp"; *hsum: its header checksum. */
static int write_head(const char *data_dir, const struct manifest *m, const struct ptensor *t,
                      const uint8_t *head, char *rel, size_t rel_len, uint64_t *hsum,
                      uint64_t *file_size)
{
    char tmp[4210], fin[4200], eb[EC_ERRMSG_MAX];
    unsigned char rnd[8];
    ec_partfile_meta want, meta;
    uint64_t *sums = NULL, done = 0;
    int fd = -1, r;

    (void)m;
    /* The head's length says which file format it has (the manifest's
     * validation allowed only these two). */
    if ((r = pub_tensor_layout(t, 0, &want)))
        return r;
    if (t->head_len != want.data_off &&
        (r = pub_tensor_layout(t, EC_PARTFILE_VERSION_1, &want)))
        return r;
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
        return ec_seterr_errno(EC_EIO, errno, "lazy pull: getrandom");
    snprintf(rel, rel_len, "%s/%02x%02x%02x%02x%02x%02x%02x%02x%s", EC_PARTS_DIR, rnd[0],
             rnd[1], rnd[2], rnd[3], rnd[4], rnd[5], rnd[6], rnd[7], EC_PARTFILE_EXT);
    if ((size_t)snprintf(fin, sizeof(fin), "%s/%s", data_dir, rel) >= sizeof(fin))
        return ec_seterr(EC_EINVAL, "lazy pull: the data directory's path is too long");
    snprintf(tmp, sizeof(tmp), "%.4199s.tmp", fin);
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
        return ec_seterr_errno(EC_EIO, errno, "lazy pull: creating %s", tmp);
    while (done < t->head_len) {
        ssize_t n = pwrite(fd, head + done, t->head_len - done, (off_t)done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            r = ec_seterr_errno(n < 0 && errno == ENOSPC ? EC_ENOSPC : EC_EIO,
                                n < 0 ? errno : EIO, "lazy pull: writing %s", tmp);
            goto fail;
        }
        done += (uint64_t)n;
    }
    /* The data region: a hole, filled as it is read (core/pager_remote.c). */
    if (ftruncate(fd, (off_t)want.file_size) < 0 || fsync(fd) < 0) {
        r = ec_seterr_errno(EC_EIO, errno, "lazy pull: sizing %s", tmp);
        goto fail;
    }
    close(fd);
    fd = -1;
    /* Validated as any partition file: header, tables, arithmetic, size. */
    if ((r = ec_partfile_open(tmp, &meta, &fd)) < 0) {
        r = ec_seterr(r, "tensor '%s': its file head from the cluster: %s", t->name,
                      pub_saved_err(eb));
        goto fail;
    }
    if (meta.dtype != t->dtype || meta.ndim != t->ndim ||
        memcmp(meta.shape, t->shape, sizeof(meta.shape)) || meta.rows_per_partition != t->rpp ||
        meta.partitions != t->partitions || meta.file_size != want.file_size) {
        r = ec_seterr(EC_EFORMAT, "tensor '%s': its file head from the cluster describes "
                      "another tensor than the manifest", t->name);
        goto fail;
    }
    if (!(sums = malloc((t->partitions ? t->partitions : 1) * 8))) {
        r = ec_seterr(EC_ENOMEM, "lazy pull");
        goto fail;
    }
    if ((r = ec_partfile_read_table(fd, &meta, sums)) < 0)
        goto fail;
    for (uint64_t p = 0; p < t->partitions; p++)
        if (sums[p] != t->sum[p]) {
            r = ec_seterr(EC_EFORMAT, "tensor '%s' partition %" PRIu64 ": its file head's "
                          "checksum %016" PRIx64 " is not the manifest's %016" PRIx64,
                          t->name, p, sums[p], t->sum[p]);
            goto fail;
        }
    close(fd);
    fd = -1;
    if (rename(tmp, fin) < 0) {
        r = ec_seterr_errno(EC_EIO, errno, "lazy pull: renaming %s", tmp);
        goto fail;
    }
    free(sums);
    *hsum = meta.header_checksum;
    *file_size = meta.file_size;
    return 0;
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    free(sums);
    return r;
}

int ec_pull_lazy(ec_catalog *cat, const char *data_dir, const char *model,
                 const char *version, const char *url, ec_pub_stats *out)
{
    char eb[EC_ERRMSG_MAX], parts[4200];
    struct manifest m = {0};
    ec_cat_tensor *cts = NULL;
    ec_rcluster *rc = NULL;
    uint64_t total = 0, got = 0;
    void *mb = NULL;
    uint32_t made = 0;
    int64_t v = 0, vid;
    int r;

    if ((r = pub_pull_manifest(cat, model, version, url, &v, &rc, &mb, &m, &total))) {
        if (!rc)
            return r; /* nothing opened: the message says it all */
        goto out;
    }
    if (m.format < PUB_FORMAT) {
        r = ec_seterr(EC_EVERSION, "model '%s' version %" PRId64 " was published by an older "
                      "embcache (manifest format %u, without file heads): publish it again to "
                      "pull it lazily, or pull it whole", model, v, m.format);
        goto out;
    }
    snprintf(parts, sizeof(parts), "%s/%s", data_dir, EC_PARTS_DIR);
    if (mkdir(parts, 0700) < 0 && errno != EEXIST) {
        r = ec_seterr_errno(EC_EIO, errno, "lazy pull: creating %s", parts);
        goto out;
    }
    if (!(cts = calloc(m.n, sizeof(*cts)))) {
        r = ec_seterr(EC_ENOMEM, "lazy pull");
        goto out;
    }
    for (uint32_t i = 0; i < m.n; i++) {
        const struct ptensor *t = &m.t[i];
        ec_cat_tensor *c = &cts[i];
        uint8_t *head = NULL;
        if ((r = fetch_head(rc, &m, i, &head)))
            goto out;
        r = write_head(data_dir, &m, t, head, c->path, sizeof(c->path), &c->header_checksum,
                       &c->file_size);
        free(head);
        if (r)
            goto out;
        made++;
        got += t->head_len;
        snprintf(c->name, sizeof(c->name), "%s", t->name);
        c->dtype = t->dtype;
        c->ndim = t->ndim;
        memcpy(c->shape, t->shape, sizeof(c->shape));
        c->rows = t->rows;
        c->row_bytes = t->row_bytes;
        c->rows_per_partition = t->rpp;
        c->partitions = t->partitions;
        c->part_checksums = t->sum; /* the manifest's; the catalog copies them */
        c->remote = true;
        c->remote_index = i;
        c->remote_chunk = m.chunk;
    }
    {
        int dfd = open(parts, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    }
    if ((r = ec_catalog_add_version_at(cat, model, v, m.round, m.params, m.created, cts, m.n,
                                       &vid)))
        goto out;
    ec_info("pulled %s version %" PRId64 " lazily: %u tensor(s), %" PRIu64 " bytes of data "
            "left on %s until read", model, v, m.n, total, url);
    if (out)
        *out = (ec_pub_stats){.version = v, .tensors = m.n, .bytes = got};
out:
    if (r) {
        for (uint32_t i = 0; i < made; i++) {
            char full[4200 + EC_CAT_PATH_MAX];
            snprintf(full, sizeof(full), "%s/%s", data_dir, cts[i].path);
            unlink(full);
        }
        if (r != EC_ENOENT && r != EC_EEXIST)
            r = ec_seterr(r, "lazy pull of '%s' version %" PRId64 " from %s failed, nothing "
                          "was registered: %s", model, v, url, pub_saved_err(eb));
    }
    free(cts);
    free(mb);
    ec_rcluster_close(rc);
    pub_manifest_free(&m);
    return r;
}

/* ------------------------------------------------------------------ */
/* Recover's check                                                     */

/* Why tensor c (from a file) is not manifest tensor t, in buf; NULL when
 * it is. */
static const char *tensor_differs(const struct ptensor *t, const ec_cat_tensor *c, char *buf,
                                  size_t len)
{
    if (t->dtype != c->dtype || t->ndim != c->ndim ||
        memcmp(t->shape, c->shape, sizeof(t->shape)) || t->rows != c->rows ||
        t->row_bytes != c->row_bytes || t->rpp != c->rows_per_partition ||
        t->partitions != c->partitions) {
        snprintf(buf, len, "tensor '%s' has another dtype, shape or partition size there",
                 c->name);
        return buf;
    }
    for (uint64_t p = 0; p < t->partitions; p++)
        if (t->sum[p] != c->part_checksums[p]) {
            snprintf(buf, len, "partition %" PRIu64 " of tensor '%s' has checksum %016"
                     PRIx64 " there and %016" PRIx64 " in its file here", p, c->name,
                     t->sum[p], c->part_checksums[p]);
            return buf;
        }
    return NULL;
}

int ec_pull_lazy_match(const char *url, const char *model, int64_t version, int64_t round,
                       int64_t created, ec_cat_tensor *ts, size_t n)
{
    char eb[EC_ERRMSG_MAX], vs[32], why[512];
    struct manifest m = {0};
    ec_rcluster *rc = NULL;
    const char *bad = NULL;
    uint64_t total = 0;
    void *mb = NULL;
    int64_t v = 0;
    int r;

    if (!url || !url[0] || !model || (n && !ts))
        return ec_seterr(EC_EINVAL, "ec_pull_lazy_match: bad argument");
    snprintf(vs, sizeof(vs), "%" PRId64, version);
    if ((r = pub_pull_manifest(NULL, model, vs, url, &v, &rc, &mb, &m, &total)))
        goto out;
    if (m.n != n) {
        snprintf(why, sizeof(why), "it has %u tensor(s) there and %zu file(s) here", m.n, n);
        bad = why;
    }
    /* The data first (what decides which rows would fill the holes), then
     * the version's own record. */
    for (size_t i = 0; i < n && !bad; i++) {
        uint32_t k = 0;
        while (k < m.n && strcmp(m.t[k].name, ts[i].name))
            k++;
        if (k == m.n) {
            snprintf(why, sizeof(why), "tensor '%s' is not in it there", ts[i].name);
            bad = why;
        } else {
            bad = tensor_differs(&m.t[k], &ts[i], why, sizeof(why));
        }
        ts[i].remote_index = k;
    }
    if (!bad && (m.round != round || m.created != created)) {
        snprintf(why, sizeof(why), "its round or created time there is not its files' (%"
                 PRId64 " and %" PRId64 " there, %" PRId64 " and %" PRId64 " here)", m.round,
                 m.created, round, created);
        bad = why;
    }
    if (bad) {
        r = ec_seterr(EC_EFORMAT, "model '%s' version %" PRId64 " on %s is not the one these "
                      "files were pulled from (published again since?): %s", model, version,
                      url, bad);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        ts[i].remote = true;
        ts[i].remote_chunk = m.chunk;
    }
out:
    if (r && r != EC_EFORMAT && r != EC_ENOENT && r != EC_EVERSION)
        r = ec_seterr(r, "reading the manifest of '%s' version %" PRId64 " from %s: %s", model,
                      version, url, pub_saved_err(eb));
    free(mb);
    ec_rcluster_close(rc);
    pub_manifest_free(&m);
    return r;
}
