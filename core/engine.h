/*
 * engine.h - the daemon's engine: residency of partitions in the segment.
 *
 * Owns the segment (the only writer), the extent allocator, the pager's
 * reader threads, and the per-connection pins. Serves the server loop's
 * requests: resolve a tensor, fault partitions in (single flight: concurrent
 * misses of one partition share one read), pin a whole tensor as one
 * contiguous region for a view, unpin, stats.
 *
 * Threads: every function here is called from the server thread only. The
 * pager (core/pager.h) reads partition files (or, for versions pulled
 * lazily, the remote tier's cluster: core/engine_remote.c) into extents that are
 * allocated but not yet published and signals an eventfd
 * (ec_engine_event_fd); the server thread then calls ec_engine_complete(),
 * which publishes entries and answers requests through the notify callback.
 */
#ifndef EC_CORE_ENGINE_H
#define EC_CORE_ENGINE_H

#include <stdbool.h>
#include <stdint.h>

#include "common/hist.h"
#include "common/err.h"
#include "core/catalog.h"
#include "core/pager.h"
#include "core/proto.h"
#include "shm/segment.h"

typedef struct ec_engine ec_engine;
struct ec_keeper;

typedef struct ec_engine_config {
    const char *data_dir;
    uint64_t shm_size;      /* bytes of the segment */
    enum ec_pager_kind pager; /* AUTO: io_uring when it works, else pread */
    unsigned queue_depth;   /* io_uring reads in flight; 0 for 64 */
    unsigned io_threads;    /* pread reader threads; 0 for 2 */
    struct ec_keeper *keeper; /* the process keeping the segment (core/keeper.h);
                             * NULL: none, the segment goes with the engine */
    uint64_t budget;        /* host-tier bytes; 0 (or more than the data area): all of it */
    double ttl_seconds;     /* partition TTL; 0: none */
    double ttl_jitter;      /* fraction, e.g. 0.1 for +-10% */
    double rate_window;     /* seconds over which request rates are measured; 0: 60 */
    uint64_t gpu_slab;      /* device-tier slab per GPU; 0: the tier is off */
    uint64_t item_bytes;    /* the item index is sized for items of this size
                             * (a new segment only); 0: EC_ITEM_BYTES_DEFAULT,
                             * UINT64_MAX: no item store */
    const char *remote;     /* the remote tier's cluster URL; NULL or "": none (a
                             * lazily pulled version's remote bytes then fail) */
    unsigned remote_threads; /* its workers; 0: 4 */
    bool remote_keep;       /* keep what is read from it in the partition files */
    uint64_t remote_keep_reserve; /* ... while the file system keeps this many bytes
                                   * free; below it (and a margin) the coldest kept
                                   * partitions are removed again */
    uint64_t remote_keep_max; /* kept bytes of lazily pulled tensors; 0: no bound
                               * but the reserve */
} ec_engine_config;

/* The answer to an asynchronous request (FAULT, PIN). */
typedef struct ec_engine_result {
    int status;
    char msg[EC_ERRMSG_MAX];
    uint64_t pin_id, offset, length;
    uint32_t mode;          /* FAULT: how the tensor is cached now (ec_cache_mode) */
} ec_engine_result;

/* Called (from ec_engine_complete or directly from the request call) when an
 * asynchronous request finishes. owner/token are what the caller passed. */
typedef void (*ec_engine_notify_fn)(void *arg, uint64_t owner, uint64_t token,
                                    const ec_engine_result *r);

/* Lock the data dir (EC_EBUSY if another daemon holds it; with a keeper,
 * use the lock it holds), open the catalog, take over the segment the
 * keeper kept (warm restart: entries are re-validated against the catalog
 * and their checksums; bad ones are dropped) or create a new one (handed to
 * the keeper, then sealed), bump the generation, sweep orphan partition
 * files, start the pager threads. */
int ec_engine_open(const ec_engine_config *cfg, ec_engine_notify_fn notify, void *notify_arg,
                   ec_engine **out);
/* Stop the pager threads and detach. The segment stays with the keeper,
 * if there is one, for the next worker. */
void ec_engine_close(ec_engine *e);

ec_segment *ec_engine_segment(ec_engine *e);
struct ec_devtier *ec_engine_devtier(ec_engine *e);
struct ec_topology *ec_engine_topology(ec_engine *e);
/* The server tells the engine how to find the least epoch its clients'
 * device gathers hold (UINT64_MAX when none), for reclamation. */
void ec_engine_set_epoch_source(ec_engine *e, uint64_t (*fn)(void *arg), void *arg);
/* The epoch a reader must hold at least for the oldest memory waiting to be
 * freed to be freed (UINT64_MAX: nothing waits), and the newest epoch
 * issued: what the server judges its clients' epoch slots by. */
uint64_t ec_engine_epoch_blocking(const ec_engine *e);
uint64_t ec_engine_epoch_now(const ec_engine *e);
ec_catalog *ec_engine_catalog(ec_engine *e);
/* The item store (NULL: the segment has none), for the cache manager's
 * results (core/results.h), and the call it gets when one of its items
 * leaves the store (evicted, replaced, dropped). */
struct ec_itemstore *ec_engine_items(ec_engine *e);
void ec_engine_set_result_hook(ec_engine *e, void (*fn)(void *arg, uint64_t key, uint64_t bytes),
                               void *arg);
uint64_t ec_engine_generation(const ec_engine *e);

/* An extent of the data area for another module's own use (a dynamic
 * table), under the budget (evicting partitions and items for it) and
 * never evicted; the caller publishes and unpublishes it, and removes its
 * index entries before it frees it. EC_ENOSPC as for a partition. */
int ec_engine_region_alloc(ec_engine *e, uint64_t bytes, uint64_t *off);
void ec_engine_region_free(ec_engine *e, uint64_t off, uint64_t bytes);

/* The eventfd the server polls; readable when reads have finished. */
int ec_engine_event_fd(const ec_engine *e);
/* Publish finished reads and answer the requests they complete. */
void ec_engine_complete(ec_engine *e);

/* Start the reads the requests handled since the last call queued (one
 * system call for all of them). The server calls it once per loop turn. */
void ec_engine_flush(ec_engine *e);
/* True while reads wait for memory that client gathers still hold (limbo):
 * the server then polls the engine every millisecond instead of every tick. */
bool ec_engine_waiting(const ec_engine *e);

/* Resolve and describe a tensor (synchronous). */
int ec_engine_resolve(ec_engine *e, const char *model, const char *version, const char *tensor,
                      ec_proto_tensor *out);

/* Make partitions resident; answers through notify. Returns 0 when the
 * request was accepted (the answer may already have been given), or an
 * error for a request that cannot start (then notify is not called). */
int ec_engine_fault(ec_engine *e, uint64_t owner, uint64_t token, uint32_t tensor,
                    const uint32_t *parts, uint32_t n);

/* Make rows of a tensor resident: by rows (their 4 KiB blocks read, the
 * rows put in the item store) when it is cached by rows, else their
 * partitions. Answers through notify, with the tensor's mode; returns as
 * ec_engine_fault does. */
int ec_engine_fault_rows(ec_engine *e, uint64_t owner, uint64_t token, uint32_t tensor,
                         const uint64_t *ids, uint32_t n);

/* Set how a model's tensor (tensor NULL or "": all of them) is cached
 * (EC_CACHE_AUTO: the daemon decides) and apply it to the versions open
 * now: a tensor that changes mode drops what the old mode cached. */
int ec_engine_set_tensor_mode(ec_engine *e, const char *model, const char *tensor,
                              ec_cache_mode mode);

/* One tensor the engine has open, for `embcache stats`. */
typedef struct ec_engine_tensor_stat {
    uint32_t id;
    const char *model, *name;
    int64_t version;
    ec_cache_mode mode, policy;
    uint32_t file_version;       /* of its partition file */
    uint64_t bytes, row_bytes;
    uint64_t resident_bytes, resident_rows;
    uint64_t row_faults;         /* rows clients asked the daemon for */
    uint64_t bytes_read;         /* read from its file */
    uint64_t rows_admitted;
} ec_engine_tensor_stat;
typedef int (*ec_engine_tensor_fn)(const ec_engine_tensor_stat *t, void *arg);
int ec_engine_tensor_stats(ec_engine *e, ec_engine_tensor_fn fn, void *arg);

/* Pin a whole tensor contiguously for owner; answers through notify with
 * pin_id, offset (from the data area) and length. */
int ec_engine_pin(ec_engine *e, uint64_t owner, uint64_t token, uint32_t tensor);
int ec_engine_unpin(ec_engine *e, uint64_t owner, uint64_t pin_id);
/* How many pins (views) a connection holds now. */
uint32_t ec_engine_owner_pins(ec_engine *e, uint64_t owner);

/* The owner id of the daemon's own pins (a pinned prewarm). Connections
 * use ids from 16 up. */
#define EC_ENGINE_OWNER_SELF 1

/* Prewarm (model, version|alias): start loading it in the background, or
 * report the progress of the prewarm running; a finished one is reported
 * once and forgotten, so the next call starts anew. */
int ec_engine_prewarm(ec_engine *e, const char *model, const char *version, bool pin,
                      bool device,
                      ec_prewarm_progress *out);

/* Drop a version's unpinned resident partitions (and the daemon's pins). */
int ec_engine_evict(ec_engine *e, const char *model, const char *version, uint64_t *bytes);

/* Retire a version; answers through notify (token as given) once its reads
 * in flight are done. Returns an error for a request refused at once. */
int ec_engine_retire(ec_engine *e, uint64_t owner, uint64_t token, const char *model,
                     int64_t version, bool force);

/* Set a model's residency policy (minimum resident bytes per version, the
 * request rate under which a version is idle) and apply it at once. */
int ec_engine_set_policy(ec_engine *e, const char *model, uint64_t min_resident_bytes,
                         double min_request_rate);

/* Limits that may change while the engine runs (core/engine_tune.c). */
typedef struct ec_engine_limits {
    uint64_t budget;        /* as ec_engine_config.budget */
    double ttl_seconds;     /* as ec_engine_config */
    double ttl_jitter;
    double rate_window;
} ec_engine_limits;

/* Apply new limits at once (SIGHUP): a lowered budget evicts down to it now
 * (what is pinned or loading goes when released); a changed TTL applies to
 * what is resident from now on. Returns 0, or EC_EINVAL for NULL or
 * negative values. */
int ec_engine_set_limits(ec_engine *e, const ec_engine_limits *l);

/* Reload the partitions of a version whose files changed on disk. */
int ec_engine_refresh(ec_engine *e, const char *model, const char *version, uint64_t *changed);

/* A connection opened / closed: closing drops every pin it held. */
int ec_engine_owner_open(ec_engine *e, uint64_t owner, pid_t pid);
void ec_engine_owner_close(ec_engine *e, uint64_t owner);

/* A client reported an access to (tensor, part) or to an item
 * (EC_RING_ITEM_HINT): feeds the eviction policy. The key is untrusted;
 * unknown keys are ignored. */
void ec_engine_touch(ec_engine *e, uint64_t key);

/* Periodic work (the server calls it every tick): TTL expiry. */
void ec_engine_tick(ec_engine *e);

/* Report statistics. */
int ec_engine_stats(ec_engine *e, int (*cb)(const char *name, uint64_t v, void *arg), void *arg);

/* Latency histograms (server thread): fault requests, from arrival to
 * answer; pager reads, from submission to completion. */
void ec_engine_hists(const ec_engine *e, ec_hist *fault, ec_hist *read);
/* The remote tier's reads, submit to completion (zero without one). */
void ec_engine_remote_hist(ec_engine *e, ec_hist *out);
/* Whether remote reads keep what they fetched in the partition files from
 * now on, while the file system keeps how many bytes free, and how many
 * bytes kept partitions may take (SIGHUP's remote-keep, remote-keep-reserve
 * and remote-keep-max). */
void ec_engine_set_remote_keep(ec_engine *e, bool keep, uint64_t reserve, uint64_t max);

/* Fault hook (tests): every nth partition read fails as `kind`. */
void ec_engine_inject(ec_engine *e, enum ec_fault_kind kind, unsigned every_nth);

/* The pager's name ("io_uring", "pread") and its statistics. */
const char *ec_engine_pager_name(const ec_engine *e);

#endif
