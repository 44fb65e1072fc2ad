/*
 * recover.h - rebuild a lost or damaged catalog from the partition files:
 * `embcache recover --data-dir DIR [--dry-run]`.
 *
 * What it owns: the procedure, not any data. The catalog belongs to
 * core/catalog*.c and the file format to core/partfile.h; recover reads
 * every partition file under DATA_DIR/parts whole (ec_partfile_verify: the
 * header, both tables and every byte of data against its checksums), takes
 * each valid file's origin record (model, version, tensor, round, params,
 * created time, tensors in the version) and registers, through
 * ec_catalog_add_version_at, every version whose files are all present,
 * all valid and name distinct tensors, in a new catalog. The damaged
 * catalog (catalog.db, -wal, -shm) is moved aside to
 * catalog.db.damaged-<UTC time>, never deleted and never read: nothing is
 * taken from a catalog that failed validation, so aliases and policies,
 * which only the catalog held, are lost and the report says so.
 *
 * A version pulled lazily (`embcache pull --lazy`) has its unread
 * partitions as holes in its files. Those are not checked here; the
 * version is registered, as lazily pulled again, only when the cluster
 * given as opts.remote holds it with the checksums the files' tables say
 * (the manifest is read, no data); without opts.remote, or when the
 * cluster holds another version under that number, its files are left
 * out as below. A cluster that does not answer stops the run before
 * anything is changed.
 *
 * Files it cannot register (damaged, without an origin record, in a
 * version that is incomplete or claims a tensor twice, or whose names the
 * catalog refuses) are never deleted: each is renamed in place to
 * NAME.ecp.skipped (the daemon's start-up sweep deletes *.ecp files the
 * catalog does not reference, and would otherwise take them) and reported
 * by name with the reason and what to do.
 *
 * Who calls it: the embcache CLI (tools/embcache.c), in its own process and
 * on its only thread, while no daemon runs: it holds the data directory's
 * lock (DATA_DIR/embcached.lock, the one embcached takes: core/keeper.h)
 * for the whole run, and refuses with EC_EBUSY when a daemon holds it.
 */
#ifndef EC_CORE_RECOVER_H
#define EC_CORE_RECOVER_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define EC_RECOVER_SKIPPED_SUFFIX ".skipped" /* appended to files left out */

typedef struct ec_recover_opts {
    const char *data_dir; /* the daemon's --data-dir */
    bool dry_run;         /* validate and report; change nothing */
    FILE *out;            /* the report, line by line; NULL: none */
    const char *remote;   /* the cluster lazily pulled versions came from (the
                           * daemon's --remote; its password, if any, set with
                           * ec_rcluster_set_default_auth); NULL: none */
} ec_recover_opts;

typedef struct ec_recover_result {
    uint32_t files;       /* partition files found (parts/\*.ecp) */
    uint32_t versions;    /* versions registered (a dry run: that would be) */
    uint32_t tensors;     /* their tensors */
    uint32_t skipped;     /* files left out, for any reason: the sum of the next three */
    uint32_t damaged;     /* failed validation (unreadable, malformed, checksums) */
    uint32_t no_origin;   /* valid, but without an origin record (older releases) */
    uint32_t unplaced;    /* valid, in a version that could not be registered */
    uint32_t params_lost; /* versions registered without their params ("{}") */
    uint32_t lazy;        /* versions registered as pulled lazily (data partly
                           * on the cluster, confirmed by its manifest) */
    char kept_catalog[64]; /* the damaged catalog's new name in the data directory;
                            * "" when there was none (or a dry run) */
} ec_recover_result;

/*
 * Rebuild DATA_DIR/catalog.db from DATA_DIR/parts/\*.ecp (see above).
 * The new catalog is built under a temporary name and only then put in
 * place, after the old one was moved aside; run as root, it is given the
 * data directory's owner. A dry run takes the lock, validates every file
 * and reports what it would do, without changing anything.
 * @param[in]  opts  data_dir required
 * @param[out] out   counts and the damaged catalog's new name; written
 *                   when recovery ran (rc 0), whatever it left out
 * @return 0 when it ran to the end (files may have been left out: see
 *         out->skipped), or EC_EINVAL (bad options), EC_ENOENT (no such
 *         data directory), EC_EPERM (the data directory, its parts/ or its
 *         lock file is a link or not a directory/file as expected),
 *         EC_EBUSY (a daemon holds the data directory: stop it first),
 *         EC_EIO (a directory cannot be read, a rename or the new catalog
 *         failed; the data directory is left as it was, or with the old
 *         catalog moved aside and the new one not yet in place: the
 *         message says which and what to do), EC_ENOMEM; with
 *         opts.remote, the cluster's errors (EC_ECONN, EC_ETIMEOUT,
 *         EC_EINVAL for a bad URL, ...: nothing was changed).
 */
int ec_recover(const ec_recover_opts *opts, ec_recover_result *out);

#endif
