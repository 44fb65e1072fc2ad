/*
 * unpublish.c - what is left of a model version on the cluster (the layout
 * is in publish.h): `embcache unpublish` removes a version, and a publish
 * of a version already there removes the keys of the earlier publish that
 * the new one did not write over (it had more tensors, partitions or
 * chunks), which would otherwise stay on the cluster's memory for good.
 *
 * Keys to delete are only ever named by a manifest that passed validation
 * (pub_manifest_decode), never by a pattern: a manifest that fails it
 * deletes nothing. Unpublish deletes the file heads and chunks first and
 * the manifest last, and the manifest only while it still holds the bytes
 * that named them (ec_rcluster_del_if_equal): a run cut off part way
 * leaves the manifest, so running it again finishes the work, and a
 * publish of the same version that raced it is reported, not erased.
 * A host that pulled the version lazily then fails the reads of what it
 * had not kept, with the cluster's "missing" (EC_ECHECKSUM), never with
 * other bytes.
 *
 * Runs on the daemon's importer thread (core/server_remote.c), with a
 * cluster handle of the call's own.
 */
#include "core/publish.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/log.h"
#include "core/publish_impl.h"

#define DEL_BATCH 4096u /* keys in one ec_rcluster_mdel */

/* Keys queued for one DEL batch, in one arena. */
struct dbatch {
    char *arena;            /* DEL_BATCH keys of PUB_KEY_MAX bytes */
    const char *keys[DEL_BATCH];
    size_t klen[DEL_BATCH];
    size_t n;
    uint64_t deleted;
};

static void del_cb(void *arg, size_t i, int status, const void *val, size_t len,
                   const char *msg)
{
    struct dbatch *b = arg;

    (void)i;
    (void)val;
    (void)len;
    (void)msg;
    if (status == 0)
        b->deleted++;
}

static int flush(ec_rcluster *rc, struct dbatch *b)
{
    int r = b->n ? ec_rcluster_mdel(rc, b->keys, b->klen, b->n, del_cb, b) : 0;

    b->n = 0;
    return r;
}

static char *slot(struct dbatch *b)
{
    b->keys[b->n] = b->arena + (size_t)b->n * PUB_KEY_MAX;
    return (char *)b->keys[b->n];
}

/* Whether m's layout names head chunk k (chunk k of partition p) of tensor
 * t: a key a publish of m wrote. */
static bool has_head(const struct manifest *m, uint32_t t, uint64_t k)
{
    return m && m->format >= PUB_FORMAT && t < m->n && k < pub_nchunks(m->t[t].head_len,
                                                                       m->chunk);
}

static bool has_chunk(const struct manifest *m, uint32_t t, uint64_t p, uint64_t k)
{
    return m && t < m->n && p < m->t[t].partitions &&
           k < pub_nchunks(m->t[t].len[p], m->chunk);
}

int pub_drop_keys(ec_rcluster *rc, const struct manifest *old, const struct manifest *keep,
                  uint64_t *deleted)
{
    struct dbatch *b;
    int r = 0;

    *deleted = 0;
    if (keep && (strcmp(keep->model, old->model) || keep->version != old->version))
        return ec_seterr(EC_EINTERNAL, "pub_drop_keys: two versions' manifests");
    if (!(b = calloc(1, sizeof(*b))) || !(b->arena = malloc((size_t)DEL_BATCH * PUB_KEY_MAX))) {
        free(b);
        return ec_seterr(EC_ENOMEM, "the keys of '%s' version %" PRId64 " to delete",
                         old->model, old->version);
    }
    for (uint32_t t = 0; t < old->n && !r; t++) {
        const struct ptensor *pt = &old->t[t];
        uint64_t nh = old->format >= PUB_FORMAT ? pub_nchunks(pt->head_len, old->chunk) : 0;

        for (uint64_t k = 0; k < nh && !r; k++) {
            if (has_head(keep, t, k))
                continue;
            b->klen[b->n] = pub_head_key(slot(b), old->model, old->version, t, k);
            if (++b->n == DEL_BATCH)
                r = flush(rc, b);
        }
        for (uint64_t p = 0; p < pt->partitions && !r; p++)
            for (uint64_t k = 0, nk = pub_nchunks(pt->len[p], old->chunk); k < nk && !r; k++) {
                if (has_chunk(keep, t, p, k))
                    continue;
                b->klen[b->n] = pub_chunk_key(slot(b), old->model, old->version, t, p, k);
                if (++b->n == DEL_BATCH)
                    r = flush(rc, b);
            }
    }
    if (!r)
        r = flush(rc, b);
    *deleted = b->deleted;
    free(b->arena);
    free(b);
    return r;
}

int ec_unpublish_version(const char *url, const char *model, const char *version,
                         ec_pub_stats *out)
{
    char eb[EC_ERRMSG_MAX], key[PUB_KEY_MAX];
    struct manifest m = {0};
    ec_rcluster *rc = NULL;
    uint64_t total = 0, deleted = 0;
    void *mb = NULL;
    size_t mlen = 0, kl;
    int64_t v;
    int r;

    if ((r = ec_catalog_check_name("model", model)))
        return r;
    if (pub_parse_version(version, &v))
        return ec_seterr(EC_EINVAL, "unpublish: version '%s' must be a number >= 1 (an "
                         "alias names a version only on its own host)", version);
    if ((r = pub_open_cluster(url, &rc)))
        return r;
    kl = pub_manifest_key(key, model, v);
    if ((r = ec_rcluster_get(rc, key, kl, &mb, &mlen))) {
        if (r == EC_ENOENT)
            r = ec_seterr(EC_ENOENT, "model '%s' version %" PRId64 " is not published on %s "
                          "(no manifest): nothing to remove", model, v, url);
        else
            r = ec_seterr(r, "unpublish of '%s' version %" PRId64 ": reading its manifest "
                          "from %s: %s", model, v, url, pub_saved_err(eb));
        goto out;
    }
    if ((r = pub_manifest_decode(mb, mlen, model, v, &m, &total))) {
        r = ec_seterr(r, "unpublish of '%s' version %" PRId64 ": its manifest on %s fails "
                      "validation, so it cannot say which keys are the version's, and "
                      "nothing was deleted: %s", model, v, url, pub_saved_err(eb));
        goto out;
    }
    if ((r = pub_drop_keys(rc, &m, NULL, &deleted))) {
        r = ec_seterr(r, "unpublish of '%s' version %" PRId64 " from %s stopped after %" PRIu64
                      " key(s); its manifest is still there: run unpublish again: %s", model,
                      v, url, deleted, pub_saved_err(eb));
        goto out;
    }
    /* Last, and only while it is the manifest that named those keys. */
    r = ec_rcluster_del_if_equal(rc, key, kl, mb, mlen);
    if (r == EC_EBUSY) {
        r = ec_seterr(EC_EBUSY, "model '%s' version %" PRId64 " was published on %s again "
                      "while it was being removed: its new manifest was kept, but chunks "
                      "it names may be gone; publish it again, or unpublish it again", model,
                      v, url);
        goto out;
    }
    if (r && r != EC_ENOENT) {
        r = ec_seterr(r, "unpublish of '%s' version %" PRId64 ": its chunks are gone from %s "
                      "but its manifest could not be deleted; run unpublish again: %s", model,
                      v, url, pub_saved_err(eb));
        goto out;
    }
    r = 0;
    ec_info("unpublished %s version %" PRId64 " from %s: %u tensor(s), %" PRIu64 " bytes, %"
            PRIu64 " key(s)", model, v, url, m.n, total, deleted + 1);
    if (out)
        *out = (ec_pub_stats){.version = v, .tensors = m.n, .bytes = total};
out:
    free(mb);
    ec_rcluster_close(rc);
    pub_manifest_free(&m);
    return r;
}
