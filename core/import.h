/*
 * import.h - turn .npy / .safetensors files into partition files and a
 * registered model version.
 *
 * Runs in the daemon's importer thread with its own catalog handle. For each
 * input tensor: plan partitions, stream the data (byte-swapping big-endian
 * input) into a temporary partition file, fsync, rename. Then register the
 * version and all its tensors in one catalog transaction. On any failure
 * every file this import created is removed and nothing is registered.
 * Every partition file records its origin (partfile.h) for `embcache
 * recover` (core/recover.c).
 */
#ifndef EC_CORE_IMPORT_H
#define EC_CORE_IMPORT_H

#include <stddef.h>
#include <stdint.h>

#include "catalog.h"
#include "embcache.h"

#define EC_IMPORT_MAX_FILES 64
#define EC_PARTS_DIR "parts" /* partition files live in <data_dir>/parts */

typedef struct ec_import_file {
    int fd;            /* readable; not closed by the importer */
    const char *name;  /* the client's file name (basename used for .npy stems
                        * and to pick the format by extension) */
} ec_import_file;

/* Write all n bytes of p to fd (a file about to be imported: a snapshot's or
 * a pulled version's safetensors stream), retrying short writes and EINTR.
 * 0, or EC_ENOSPC / EC_EIO with a message naming what (\"writing WHAT\"). */
int ec_import_write(int fd, const void *p, size_t n, const char *what);

/* Import files as (opts->model, opts->version). Format by extension:
 * ".npy" or ".safetensors" (EC_EFORMAT otherwise, naming the file). Tensor
 * names must be unique within the version (EC_EEXIST). Returns 0 and the
 * number of tensors, or the first error with a message naming the file. */
int ec_import_files(ec_catalog *cat, const char *data_dir, const ec_import_opts *opts,
                    const ec_import_file *files, size_t n, uint32_t *tensors_out);

/* ec_import_files with the version's created time given (Unix seconds,
 * > 0; 0: now): a pull keeps the time the version was made on its host. */
int ec_import_files_at(ec_catalog *cat, const char *data_dir, const ec_import_opts *opts,
                       int64_t created_unix, const ec_import_file *files, size_t n,
                       uint32_t *tensors_out);

/* Rewrite the partition files of (model, version or alias) that older
 * releases wrote: version-1 files (no block checksums) and files without an
 * origin record (which `embcache recover` cannot place), as version 2 with
 * block checksums and an origin record (the file's own when it has one,
 * else what the catalog says: model, version, tensor name, round, params,
 * created time, number of tensors). Each is verified partition by
 * partition before the new file replaces the old one under the same name
 * (rename). The catalog still holds the old header checksums: the caller
 * refreshes the version (ec_engine_refresh) to take the new files. Files
 * already current are left alone. Returns 0 and the number of files
 * rewritten, or the first error (the files already rewritten stay
 * rewritten and valid). */
int ec_import_upgrade(ec_catalog *cat, const char *data_dir, const char *model,
                      const char *version, uint32_t *upgraded_out);

/* Remove *.tmp files and partition files the catalog does not reference from
 * <data_dir>/parts (start-up sweep). Returns the number removed, or < 0;
 * EC_ECORRUPT, deleting no partition file, when the catalog was created by
 * this open yet partition files exist (a lost catalog). */
int ec_import_sweep(ec_catalog *cat, const char *data_dir);

#endif
