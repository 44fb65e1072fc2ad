/*
 * dyntable.h - the daemon's dynamic tables: tensors whose rows are
 * inserted, updated and deleted online by int64 key (the client API is
 * include/embcache_dynamic.h, the shared-memory format shm/dyntable.h).
 *
 * What it owns: every dynamic table the catalog names, each an extent of
 * the segment reserved whole from the engine's budget and published as the
 * tensor's (tensor, EC_DYN_PART) index entry; per table, the daemon's
 * private state (the FIFO of free slots, the least-recently-written order
 * of keys); and the write-ahead log (core/wal.h) of every update.
 *
 * How an update goes: validated whole (sizes, capacity under
 * EC_DYN_REFUSE) -> appended to the log (and, with sync "batch",
 * fdatasync'ed) -> applied to shared memory -> acknowledged. Nothing is
 * applied that is not logged, and applying a logged batch is deterministic
 * (it depends only on the table's state and the batch), so a daemon that
 * starts rebuilds each table from its base rows and the log's records
 * after the base's lsn and arrives at the state it acknowledged.
 *
 * Who calls it: the server loop (core/server_dyn.c) on the server thread,
 * the only thread that touches this module.
 */
#ifndef EC_CORE_DYNTABLE_H
#define EC_CORE_DYNTABLE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/engine.h"
#include "core/wal.h"

typedef struct ec_dyn ec_dyn;

typedef struct ec_dyn_config {
    const char *data_dir;         /* the log is <data_dir>/wal */
    ec_wal_sync_mode sync;        /* EC_WAL_SYNC_BATCH by default */
    uint32_t sync_ms;             /* EC_WAL_SYNC_INTERVAL: every this many ms (0: 100) */
    uint64_t wal_file_bytes;      /* 0: the log's default */
} ec_dyn_config;

typedef struct ec_dyn_result {
    uint64_t lsn, inserted, updated, deleted, missing, evicted;
    uint64_t applied;             /* rows applied before an error (0 or n) */
} ec_dyn_result;

/* Open the log and rebuild every table the catalog marks dynamic (base
 * rows, then the log). A table that cannot be rebuilt (its base unreadable,
 * its log damaged) is not served, and the message says why; the others
 * are. A damaged log (a bad record that is not a torn tail) is an error:
 * nothing is deleted, and no table is served. */
int ec_dyn_open(ec_engine *e, const ec_dyn_config *cfg, ec_dyn **out);
void ec_dyn_close(ec_dyn *d);

/* Make (model, version or alias, tensor) dynamic: load it, record it.
 * capacity 0: 2 * rows, at least 1024. As ec_model_dynamic. */
int ec_dyn_make(ec_dyn *d, const char *model, const char *version, const char *tensor,
                uint64_t capacity, uint32_t policy);

/* Is the tensor a dynamic table served now? */
bool ec_dyn_has(const ec_dyn *d, uint32_t tensor);

/* Insert or update (put) / delete n keys of tensor's table. rows is
 * n * row_bytes (put) or NULL (delete). 0 and *res, or an error with
 * nothing applied (res->applied 0), or, for a key whose two buckets are
 * full under EC_DYN_REFUSE (very rare), EC_ENOSPC after res->applied rows
 * (logged: a replay stops at the same row). */
int ec_dyn_put(ec_dyn *d, uint32_t tensor, const int64_t *keys, uint32_t n, const void *rows,
               uint64_t row_bytes, ec_dyn_result *res);
int ec_dyn_delete(ec_dyn *d, uint32_t tensor, const int64_t *keys, uint32_t n,
                  ec_dyn_result *res);

/* Write every dynamic table of (model, version) into a new version (see
 * ec_model_snapshot) and make it their base. */
int ec_dyn_snapshot(ec_dyn *d, const char *model, const char *version, int64_t new_version,
                    int64_t *version_out);

/* Once a tick: the log's interval sync; tables whose tensor left the
 * catalog (version retired) are dropped. */
void ec_dyn_tick(ec_dyn *d);

/* The poll timeout the log's interval sync needs, in ms (-1: none). */
int ec_dyn_timeout_ms(const ec_dyn *d);

/* Change the log's sync mode and interval (sync_ms 0: 100) while serving
 * (embcached's SIGHUP; ec_wal_set_sync). 0, or the log's error (the mode is
 * then unchanged). A daemon whose log is broken takes the new mode for when
 * it is opened again. */
int ec_dyn_set_sync(ec_dyn *d, ec_wal_sync_mode mode, uint32_t sync_ms);

typedef struct ec_dyn_stat {
    uint32_t tensor;
    const char *model, *name;
    int64_t version;
    uint64_t capacity, keys, row_bytes, bytes;
    uint32_t policy;
    uint64_t lsn, base_lsn;
    uint64_t puts, inserts, updates, deletes, evictions, refused;
} ec_dyn_stat;

/* Call fn for every table; then the log's totals through put. */
void ec_dyn_foreach(const ec_dyn *d, void (*fn)(const ec_dyn_stat *s, void *arg), void *arg);
void ec_dyn_totals(const ec_dyn *d, void (*put)(const char *name, uint64_t v, void *arg),
                   void *arg);

#endif
