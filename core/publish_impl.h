/*
 * publish_impl.h - private to core/publish.c and core/pull_lazy.c: the
 * manifest as both read it, and the helpers publish.c defines and the lazy
 * pull calls. Nothing else includes it; the interface is core/publish.h.
 *
 *   publish.c    publish, whole pull, the manifest's encoding and its
 *                validation (pub_pull_manifest)
 *   pull_lazy.c  lazy pull (file heads only) and the check that lets
 *                `embcache recover` register a lazily pulled version again
 *   unpublish.c  removing a version from the cluster, and the keys a
 *                publish again leaves behind
 *
 * Both run on the caller's thread with a cluster handle of their own.
 */
#ifndef EC_CORE_PUBLISH_IMPL_H
#define EC_CORE_PUBLISH_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/catalog.h"
#include "core/partfile.h"
#include "core/rcluster.h"

#define PUB_MAGIC "ECPUBM01"
#define PUB_FORMAT 2u   /* what publish writes */
#define PUB_FORMAT_1 1u /* still read: no file heads (no lazy pull) */
#define PUB_KEY_MAX 512

/* One tensor of a manifest. */
struct ptensor {
    char name[EC_NAME_MAX + 1];
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t rows, row_bytes, rpp, partitions;
    uint64_t *len, *sum;   /* per partition; malloc'd (one block: len then sum) */
    uint64_t head_len;     /* format 2: bytes [0, data_off) of its partition file */
    uint64_t head_sum;     /* their XXH3-64 */
    char path[EC_CAT_PATH_MAX]; /* publish: the partition file */
    bool lazy;             /* publish: pulled lazily here (its file may have holes) */
};

struct manifest {
    char model[EC_NAME_MAX + 1];
    int64_t version, round, created;
    char *params;
    uint32_t format;       /* decoded: PUB_FORMAT_1 or PUB_FORMAT */
    uint32_t chunk;
    uint32_t n;
    struct ptensor *t;     /* by name, ascending (the decoder checks) */
};

/* A version number: decimal, >= 1, the whole string. 0 or -1. */
int pub_parse_version(const char *s, int64_t *out);

/* Open the cluster at url for a publish, pull or unpublish. */
int pub_open_cluster(const char *url, ec_rcluster **out);

/* The thread's last message, copied into buf (EC_ERRMSG_MAX bytes):
 * ec_seterr must not format from its own buffer. Returns buf. */
const char *pub_saved_err(char *buf);

void pub_manifest_free(struct manifest *m);

/* The cluster keys (publish.h), written into buf (PUB_KEY_MAX bytes); each
 * returns its length. The manifest of (model, v): */
size_t pub_manifest_key(char *buf, const char *model, int64_t v);

/* Chunk k of tensor t's file head: */
size_t pub_head_key(char *buf, const char *model, int64_t v, uint32_t t, uint64_t k);

/* Chunk k of partition p of tensor t: */
size_t pub_chunk_key(char *buf, const char *model, int64_t v, uint32_t t, uint64_t p,
                     uint64_t k);

/* Decode and validate a manifest read from the cluster (another host's
 * data): it must be (model, version). *total: its tensor bytes. */
int pub_manifest_decode(const uint8_t *b, size_t len, const char *model, int64_t version,
                        struct manifest *m, uint64_t *total);

/* Chunks of at most `chunk` bytes that len bytes take. */
uint64_t pub_nchunks(uint64_t len, uint32_t chunk);

/* The partition file layout of t in file format v (0: the current one). */
int pub_tensor_layout(const struct ptensor *t, uint32_t v, ec_partfile_meta *meta);

/* GET and validate the manifest of (model, version): a number. With cat,
 * a version already in it is refused (EC_EEXIST) before the cluster is
 * opened. *rcp: the cluster handle, set as soon as it is open (the
 * caller closes it, also on failure); *mbp: the manifest's bytes
 * (malloc'd); *m: decoded (pub_manifest_free); *total: tensor bytes. */
int pub_pull_manifest(ec_catalog *cat, const char *model, const char *version,
                      const char *url, int64_t *vp, ec_rcluster **rcp, void **mbp,
                      struct manifest *m, uint64_t *total);

/* unpublish.c: DEL every key of old (file heads and chunks) that keep's
 * layout does not also name (keep NULL: every key of old), in batches;
 * the manifest key is the caller's. *deleted: keys that existed and were
 * deleted. Returns 0 or the cluster's first error (some keys may be gone). */
int pub_drop_keys(ec_rcluster *rc, const struct manifest *old, const struct manifest *keep,
                  uint64_t *deleted);

#endif
