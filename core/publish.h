/*
 * publish.h - the shared tier's first use: copy a model version's data to a
 * Redis Cluster (`embcache publish`) and register it on another host from
 * there (`embcache pull`), without the source files.
 *
 * Called by core/server_remote.c on the daemon's importer thread, with the
 * importer's own catalog handle; one cluster handle per call (opened and
 * closed inside it), so nothing here is shared between threads.
 *
 * On the cluster, a published (model, version) is:
 *   ec:c:<model>:<version>:<t>:<p>:<k>  chunk k (at most chunk_bytes) of
 *                                       partition p of the manifest's t-th
 *                                       tensor; no hash tag: chunks spread
 *                                       over every slot
 *   ec:h:<model>:<version>:<t>:<k>      chunk k of the t-th tensor's partition
 *                                       file head: bytes [0, data_off), the
 *                                       header page, partition table and
 *                                       block table (format 2)
 *   ec:m:<model>:<version>              the manifest, written LAST
 * The manifest (binary, little-endian, "ECPUBM01" + format 2) holds the
 * version's round, params, created time and, per tensor, name, dtype,
 * shape, rows, row_bytes, rows per partition and each partition's length
 * and XXH3-64, then an XXH3-64 of all the bytes before it.
 *
 * Invariants:
 *  1. A reader that finds a manifest finds all of its chunks (written
 *     before it), unless someone deleted or overwrote them since.
 *  2. A pull registers nothing unless every partition's bytes matched the
 *     manifest's checksum before the import and the catalog's partition
 *     checksums after it equal the manifest's (the same partitions, cut
 *     the same way, with the same bytes).
 */
#ifndef EC_CORE_PUBLISH_H
#define EC_CORE_PUBLISH_H

#include <stdint.h>

#include "core/catalog.h"

#define EC_PUB_CHUNK_BYTES ((uint32_t)1 << 20)   /* a chunk, at most */
#define EC_PUB_CHUNK_MIN ((uint32_t)64 << 10)    /* the least a manifest may say */
#define EC_PUB_BATCH_BYTES ((uint64_t)64 << 20)  /* values in one MSET / MGET */
#define EC_PUB_BATCH_KEYS ((size_t)1 << 16)      /* keys in one MGET, at most */
#define EC_PUB_URL_MAX 4096                      /* the cluster URL a request carries */
#define EC_PUB_MAX_TENSORS 65536                 /* tensors a manifest may name */
#define EC_PUB_MANIFEST_MAX ((uint64_t)64 << 20) /* its largest size */

/* What a publish or pull did. */
typedef struct ec_pub_stats {
    int64_t version;   /* the concrete version */
    uint32_t tensors;
    uint64_t bytes;    /* tensor bytes written or read (chunks, not the manifest) */
} ec_pub_stats;

/* Publish (model, version or alias) of the catalog to the cluster at url
 * (see ec_rcluster_open). Every partition is read from its file and
 * checked against the catalog's checksum first. A version published
 * before is replaced (its chunks, then its manifest), and the keys of the
 * earlier publish that the new one did not write over are deleted after
 * (when the earlier manifest passes validation; a failure there is only
 * logged: the new version is published).
 * @return 0 and *out, or EC_EINVAL (bad URL; a dynamic table: publish a
 *         snapshot of it), EC_ENOENT (no such version), EC_EDTYPE (a dtype
 *         safetensors cannot carry), EC_ECHECKSUM,
 *         EC_EIO (a local file), EC_ECONN / EC_ETIMEOUT / EC_EBUSY /
 *         EC_EPROTO / EC_EIO (the cluster), EC_ENOMEM. */
int ec_publish_version(ec_catalog *cat, const char *data_dir, const char *model,
                       const char *version, const char *url, ec_pub_stats *out);

/* Remove (model, version) — a number — from the cluster at url: every
 * file head and chunk its manifest names, then the manifest, and that only
 * while it still holds the bytes read at the start (see unpublish.c).
 * Hosts that pulled it whole keep it; hosts that pulled it lazily fail
 * the reads of partitions they had not kept (EC_ECHECKSUM: missing on the
 * cluster). out->bytes: the tensor bytes the manifest described.
 * @return 0, or EC_EINVAL (bad name, a version that is not a number, bad
 *         URL), EC_ENOENT (not published there), EC_EFORMAT / EC_EVERSION
 *         (a manifest that fails validation: nothing deleted), EC_EBUSY
 *         (published again meanwhile: the new manifest was kept), the
 *         cluster's errors (the manifest is then still there: run it
 *         again), EC_ENOMEM. */
int ec_unpublish_version(const char *url, const char *model, const char *version,
                         ec_pub_stats *out);

/* Pull (model, version) — a number — from the cluster at url and import it
 * into data_dir and the catalog, as ec_import_files does.
 * @return 0 and *out, or EC_EINVAL, EC_EEXIST (the version exists here),
 *         EC_ENOENT (not published), EC_EFORMAT / EC_EVERSION (a manifest
 *         that fails validation, or partitions one import cannot cut), EC_ECHECKSUM (a chunk missing, of the wrong size, or
 *         a partition whose bytes fail the manifest's checksum: the message
 *         names tensor, partition and chunk), EC_ENOSPC (the data
 *         directory's file system has not room for it), the cluster's
 *         errors as ec_publish_version, or the import's. Nothing is
 *         registered on failure (a version imported before the last check
 *         failed is dropped again, files included). */
int ec_pull_version(ec_catalog *cat, const char *data_dir, const char *model,
                    const char *version, const char *url, ec_pub_stats *out);

/* Pull (model, version) lazily: register it with its data left on the
 * cluster. For each tensor the manifest's file head (format 2) is fetched,
 * checked against the manifest's checksum, written as the tensor's
 * partition file (a new name under <data_dir>/parts) and truncated to the
 * file's full size, so its data region is one hole; the file is then
 * validated as any partition file is opened (ec_partfile_open) and its
 * partition table must hold the manifest's checksums. The version is
 * registered with remote = true, its manifest index and chunk size (see
 * ec_cat_tensor); the daemon's remote tier (core/pager_remote.c) reads the
 * partitions when they are first needed. No data chunk is read here.
 * out->bytes: the bytes of the file heads.
 * @return 0, or as ec_pull_version; EC_EVERSION for a version published
 *         in manifest format 1 (no heads: publish it again). Nothing is
 *         registered on failure, and the files written are removed. */
int ec_pull_lazy(ec_catalog *cat, const char *data_dir, const char *model,
                 const char *version, const char *url, ec_pub_stats *out);

/* For `embcache recover`: whether ts[0..n), the tensors of (model,
 * version) as its lazily pulled partition files describe them (names,
 * dtype, shape, layout, every partition's checksum from the file's
 * table), are the version the cluster at url holds now, with the round and
 * created time the files' origin records give. Reads the manifest only.
 * On success each ts[i] gets remote = true, its manifest index and the
 * manifest's chunk size, ready for ec_catalog_add_version_at; the
 * partitions not on local disk are then read from the cluster as after
 * ec_pull_lazy.
 * @return 0, or EC_EINVAL, EC_ENOENT (not published there), EC_EFORMAT (a
 *         manifest that fails validation, or another version under that
 *         number: the message says what differs), EC_EVERSION (a manifest
 *         format this release does not read), the cluster's errors
 *         (EC_ECONN, EC_ETIMEOUT, ...), EC_ENOMEM. */
int ec_pull_lazy_match(const char *url, const char *model, int64_t version, int64_t round,
                       int64_t created, ec_cat_tensor *ts, size_t n);

#endif
