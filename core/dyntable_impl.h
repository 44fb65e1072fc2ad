/*
 * dyntable_impl.h - the state core/dyntable.c and core/dyntable_snap.c
 * share: one struct per dynamic table and the module's own. Server thread
 * only.
 */
#ifndef EC_CORE_DYNTABLE_IMPL_H
#define EC_CORE_DYNTABLE_IMPL_H

#include <assert.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/err.h"
#include "common/u64map.h"
#include "core/dyntable.h"
#include "core/wal.h"
#include "embcache.h"
#include "shm/dyntable.h"

struct dtab {
    uint32_t tensor;              /* catalog tensor id */
    int64_t version_id, version;
    char model[EC_NAME_MAX + 1], name[EC_NAME_MAX + 1];
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t capacity, row_bytes;
    uint32_t policy;
    int64_t base_tensor;          /* 0: its own rows */
    uint64_t base_lsn;            /* the log's records up to this are in the base */
    uint64_t lsn;                 /* the last record applied */

    uint64_t off, bytes;          /* the extent; bytes 0: none */
    bool published;               /* its index entry is in the segment */
    ec_dyn_view v;                /* over the daemon's writable mapping */
    uint64_t *fifo, fhead, fcount; /* free slots, a ring of v.nslots */
    uint64_t *prev, *next;        /* LRU links of live slots (UINT64_MAX: none) */
    uint64_t lru_head, lru_tail;  /* least and most recently written */
    uint64_t live;

    struct {
        uint64_t puts, inserts, updates, deletes, evictions, refused;
    } st;
};

struct ec_dyn {
    ec_engine *e;
    ec_dyn_config cfg;
    char *data_dir;
    ec_wal *wal;
    ec_u64map tabs;               /* tensor id -> struct dtab */
    double last_sync;
    uint64_t cat_changes;
    int broken;                   /* the log failed validation: EC_E*, else 0 */
    char broken_msg[EC_ERRMSG_MAX];
    struct {
        uint64_t load_failures, replayed, replayed_applied, snapshots;
    } st;
};

struct dtab *dyn_tab(const struct ec_dyn *d, uint32_t tensor);
/* Apply a batch (logged as lsn: every slot it writes records it). */
int dyn_apply_put(struct dtab *t, const int64_t *keys, uint32_t n, const uint8_t *rows,
                  uint64_t lsn, ec_dyn_result *res);
void dyn_apply_del(struct dtab *t, const int64_t *keys, uint32_t n, ec_dyn_result *res);
void dyn_publish_gauges(struct dtab *t);

#endif
