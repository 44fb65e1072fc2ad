/*
 * embcache_dynamic.h - dynamic tables: embedding tables keyed by arbitrary
 * int64 keys whose rows are inserted, updated and deleted online.
 * Included by embcache.h; do not include it alone.
 *
 * Any 2-D (or higher) tensor of a model version can be made dynamic
 * (ec_model_dynamic). From then on the daemon keeps the whole table in
 * shared memory, keyed by int64: the version's rows are its first content,
 * with keys 0..rows-1, or the keys in a tensor named "<tensor>.keys"
 * (int64, one per row) when the version has one. Readers look keys up in
 * their read-only mapping, with no lock and no system call
 * (ec_tensor_gather: ids are keys), and see each row either as it was or
 * as an update left it, never a mix; a row written nonstop is read at full
 * speed (updates go to a fresh copy, then a pointer moves).
 *
 * Updates (ec_rows_put, ec_rows_delete) go through the daemon, which logs
 * each batch in a write-ahead log in its data directory before it applies
 * and acknowledges it: after a crash (kill -9 included) the daemon rebuilds
 * every table from its base and the log, and no acknowledged update is
 * lost. When the log is made durable is the daemon's --wal-sync: "batch"
 * (default: fdatasync before each acknowledgement), "interval" (every
 * --wal-sync-ms; a crash of the machine, not of the daemon, may lose that
 * much), or "none". ec_model_snapshot folds a table's updates into a new,
 * immutable model version, which aliases can point at and roll back to, and
 * which becomes the table's new base (the log before it can go).
 *
 * A table holds at most `capacity` keys; inserting past it either fails
 * (EC_DYN_REFUSE: the whole batch is refused before anything is applied)
 * or evicts the least recently written keys (EC_DYN_EVICT_LRU, as
 * HierarchicalKV's LRU score does). Every update and key counts against the
 * daemon's memory budget from the moment the table is made dynamic: the
 * table's memory (about capacity * 1.06 * (row + 32 bytes) + 16 bytes per
 * key) is reserved whole.
 */
#ifndef EMBCACHE_DYNAMIC_H
#define EMBCACHE_DYNAMIC_H

#ifndef EMBCACHE_H
#error "include embcache.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** What a full table does with a new key. Values are stable. */
typedef enum ec_dyn_policy {
    EC_DYN_REFUSE = 1,     /**< refuse the batch (EC_ENOSPC) */
    EC_DYN_EVICT_LRU = 2,  /**< delete the least recently written keys */
} ec_dyn_policy;

/**
 * Make tensor of (model, version or alias) a dynamic table of at most
 * capacity keys (0: twice its rows, at least 1024). Administrators only.
 * The daemon loads the version's rows into the table (this call returns
 * when it has) and records the table in its catalog; it is rebuilt at every
 * start. Calling it again for a dynamic table changes nothing and succeeds
 * when capacity and policy are the same.
 * @return 0, or EC_EINVAL (a 1-D tensor, capacity below its rows or above
 *         2^36, an unknown policy), EC_ENOENT, EC_EEXIST (dynamic already,
 *         with other settings), EC_ENOSPC (the table does not fit the
 *         budget), EC_ECHECKSUM / EC_EIO (the rows could not be read),
 *         EC_EPERM, EC_ECONN.
 */
EC_API int ec_model_dynamic(ec_client *c, const char *model, const char *version,
                            const char *tensor, uint64_t capacity, ec_dyn_policy policy);

/** What an update did. */
typedef struct ec_rows_result {
    uint64_t lsn;          /**< the log sequence number of the batch */
    uint64_t inserted;     /**< keys that were new */
    uint64_t updated;      /**< keys that were there */
    uint64_t deleted;      /**< keys removed (ec_rows_delete) */
    uint64_t missing;      /**< keys ec_rows_delete did not find */
    uint64_t evicted;      /**< keys EC_DYN_EVICT_LRU removed to make room */
} ec_rows_result;

/** Rows and keys per ec_rows_put/ec_rows_delete call at most (the client
 *  splits nothing: a batch is logged and applied whole). */
#define EC_ROWS_BATCH_MAX (1u << 20)

/**
 * Insert or update n rows of a dynamic table: keys[i] gets the row at
 * rows + i * row_bytes (the tensor's dtype; row_bytes as ec_tensor_info
 * says). A key given twice takes its last row. The batch is logged, then
 * applied, then acknowledged: when this returns 0 it survives a crash of
 * the daemon (and, with --wal-sync batch, of the machine). Administrators
 * only.
 * @param[out] res    what it did; may be NULL
 * @return 0, or EC_EINVAL (NULL, n above EC_ROWS_BATCH_MAX, rows_bytes not
 *         n rows), EC_ENOSPC (EC_DYN_REFUSE and the new keys would pass
 *         the capacity: nothing applied), EC_EPERM, EC_ENOENT (not a dynamic
 *         table, or no longer: re-resolve), EC_EIO (the log could not be
 *         written: nothing applied), EC_ECONN.
 */
EC_API int ec_rows_put(ec_tensor *t, const int64_t *keys, size_t n, const void *rows,
                       size_t rows_bytes, ec_rows_result *res);

/**
 * Delete n keys of a dynamic table (absent keys are counted in
 * res->missing, not an error). Logged and acknowledged as ec_rows_put.
 * @return as ec_rows_put.
 */
EC_API int ec_rows_delete(ec_tensor *t, const int64_t *keys, size_t n, ec_rows_result *res);

/**
 * Read the rows of n keys of a dynamic table into out (n * row_bytes):
 * a key that is absent gets a row of zeros and found[i] = 0 (found may be
 * NULL). ec_tensor_gather() reads the same rows but fails with EC_ENOENT
 * on the first absent key. Lock-free, no system call; any thread.
 * @param[out] nfound   keys found; may be NULL
 * @return 0, or EC_EINVAL (not a dynamic table, NULL, out too small),
 *         EC_ESTALE (the daemon restarted or dropped the table: re-resolve).
 */
EC_API int ec_rows_find(ec_tensor *t, const int64_t *keys, size_t n, void *out,
                        size_t out_size, uint8_t *found, size_t *nfound);

/** A dynamic table's state, for monitoring. */
typedef struct ec_dyn_info {
    uint64_t capacity, keys;      /**< keys at most, keys now */
    ec_dyn_policy policy;
    uint64_t lsn;                 /**< the last update applied */
    uint64_t puts, deletes, evictions; /**< rows since the daemon started */
} ec_dyn_info;

/** The table's state as the shared segment says it now (no system call).
 *  @return 0, or EC_EINVAL (not a dynamic table), EC_ESTALE. */
EC_API int ec_rows_info(ec_tensor *t, ec_dyn_info *out);

/** One dynamic table as the daemon reports it (ec_client_dyn_tables). */
typedef struct ec_dyn_table_stat {
    char model[EC_NAME_MAX + 1];
    int64_t version;
    char tensor[EC_NAME_MAX + 1];
    uint64_t capacity, keys;      /**< keys at most, keys now */
    uint64_t row_bytes, bytes;    /**< a row; the table's memory */
    ec_dyn_policy policy;
    uint64_t lsn;                 /**< the last update applied */
    uint64_t base_lsn;            /**< updates up to this are in its base */
    uint64_t puts, inserts, updates, deletes, evictions, refused; /**< since start */
} ec_dyn_table_stat;

/**
 * Call cb for every dynamic table the daemon serves (at most 160). cb's
 * non-zero return stops and is returned. Any client may ask.
 * @return 0, EC_EINVAL, EC_ECONN, EC_EPROTO, or cb's value.
 */
EC_API int ec_client_dyn_tables(ec_client *c,
                                int (*cb)(const ec_dyn_table_stat *t, void *arg), void *arg);

/**
 * Fold the updates of every dynamic table of (model, version or alias)
 * into a new immutable version new_version (0: the next free number) with
 * the same tensors: each dynamic tensor as its present rows (in key order)
 * and a tensor "<name>.keys" (int64) with their keys, which the table then
 * uses as its base: the log's records up to the snapshot are no longer
 * needed. The new version can be aliased, made dynamic, or retired
 * (unless it is some table's base). Administrators only.
 * @param[out] version_out  the new version; may be NULL
 * @return 0, or EC_ENOENT, EC_EINVAL (no dynamic tensor in the version),
 *         EC_EEXIST (new_version exists), EC_ENOSPC, EC_EIO, EC_EPERM,
 *         EC_ECONN.
 */
EC_API int ec_model_snapshot(ec_client *c, const char *model, const char *version,
                             int64_t new_version, int64_t *version_out);

#ifdef __cplusplus
}
#endif

#endif /* EMBCACHE_DYNAMIC_H */
