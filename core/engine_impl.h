/*
 * engine_impl.h - private to core/engine*.c: the engine's state and the
 * functions one engine file defines and another calls. Nothing else
 * includes it; the interface is core/engine.h.
 *
 * The engine, by concern:
 *   engine.c          open/close, accessors, stats, tick, owners, tensors
 *   engine_fault.c    the partition fault path: reads, requests, pins
 *   engine_evict.c    eviction and residency policy: CLOCK, TTL, idle versions
 *   engine_life.c     model-version lifecycle: prewarm, evict, retire, refresh
 *   engine_restart.c  start-up: data-dir lock, segment, warm restart
 *   engine_rows.c     tensors cached by rows: modes, block reads, the item
 *                     store's memory, access history
 *   engine_remote.c   tensors pulled lazily: which partitions are local, what
 *                     goes to the remote tier (core/pager_remote.c)
 *   engine_keep.c     the disk those partitions take, once kept: a CLOCK that
 *                     punches the coldest out under remote-keep-reserve or
 *                     over remote-keep-max
 *
 * State, all private to the server thread except the job queues:
 *
 *   tensors    id -> struct tstate: catalog record, open partition file,
 *              the contiguous group (view placement) if any
 *   resident   EC_INDEX_KEY(tensor, part) -> struct unit that holds it
 *   inflight   EC_INDEX_KEY(tensor, part) -> struct job reading it
 *   clock      the resident units in CLOCK order, with a hand
 *   owners     connection id -> struct owner and its pins
 *
 * A unit is what is allocated and evicted as one: a single partition, or a
 * whole tensor laid out row-major in one extent (a group, made for a view).
 *
 * Invariants:
 *   1. A key is in at most one of `resident` and `inflight`.
 *   2. A key is in the segment's index iff it is in `resident`.
 *   3. A unit with pins > 0 or loading is never evicted.
 *   4. An extent is released only after every index entry pointing into it
 *      was removed (which bumps the entries' seqlocks): a reader's copy
 *      from a reused extent always fails its check.
 *   5. Between ec_pager_submit and its completion only the pager touches a
 *      job's page request and the extent's bytes.
 */
#ifndef EC_CORE_ENGINE_IMPL_H
#define EC_CORE_ENGINE_IMPL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "core/engine.h"
#include "common/hist.h"
#include "common/u64map.h"
#include "core/devtier.h"
#include "core/itemstore.h"
#include "core/partfile.h"
#include "core/topology.h"
#include "shm/extent.h"

#define GROUP_PART UINT32_MAX

struct unit;

/* Per model version: its residency policy and how much it is used. */
struct vstate {
    int64_t version_id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    uint64_t min_resident;       /* bytes eviction leaves resident */
    double min_rate;             /* requests/s under which it is idle; 0: never */
    uint64_t resident;           /* bytes of its units now resident */
    uint64_t requests;           /* in the current window */
    double last_access;          /* monotonic seconds */
};

struct tstate {
    ec_cat_tensor cat;
    struct vstate *vs;
    ec_partfile_meta meta;
    int fd;                      /* buffered */
    int dfd;                     /* O_DIRECT, or -1 where the file system refuses */
    int file_slot;               /* the pager's fixed-file slot for dfd, or -1 */
    uint64_t files_used;         /* engine_files.c: when fd was last needed */
    char path[4096 + EC_CAT_PATH_MAX + 2];
    struct unit *group;          /* contiguous placement, NULL when none */
    uint32_t inflight;           /* jobs reading this tensor's partitions */
    struct request *pin_waiters; /* pins waiting for inflight to reach 0 */
    bool retired;                /* being retired: no new reads */

    /* engine_rows.c */
    ec_cache_mode mode;          /* PARTITIONS or ROWS: how it is cached now */
    ec_cache_mode policy;        /* what the catalog's policy asks; AUTO: nothing */
    uint64_t *block_sums;        /* v2 files: one per 4 KiB block; else NULL */
    uint32_t row_jobs;           /* block reads in flight */

    /* engine_remote.c: a tensor pulled lazily (cat.remote); else NULL */
    ec_remote_src *rsrc;         /* what its remote reads need */
    uint8_t *local;              /* bit p: partition p's bytes are in the file */
    uint8_t *ref;                /* bit p: read from the file since the CLOCK's
                                  * hand last passed (engine_keep.c) */
    uint64_t local_bytes;        /* of the partitions set in local */
    struct {
        uint64_t row_faults;     /* rows clients asked the daemon for */
        uint64_t rows_admitted;  /* rows put in the item store */
        uint64_t items;          /* of its rows in the item store now */
        uint64_t bytes_read;     /* from its file: partitions and blocks */
    } rst;
};

struct unit {
    double expires;              /* monotonic seconds; 0: no TTL */
    bool counted;                /* its bytes are in its version's resident */
    uint32_t tensor;
    uint32_t part;               /* GROUP_PART for a group */
    uint64_t off;                /* extent, from the data area */
    uint64_t bytes;              /* extent size (page multiple) */
    uint32_t pins;
    bool ref;
    bool loading;                /* group still being read */
    uint32_t pending;            /* group: reads outstanding */
    int status;                  /* group: first read error */
    char msg[EC_ERRMSG_MAX];
    size_t clock_pos;            /* index in the clock, SIZE_MAX when absent */
    struct request *waiters;     /* group: pins waiting for the load */
};

/* FAULT and PIN answer a client; PREWARM and PREWARM_PIN report to the
 * prewarm that issued them instead. */
enum req_kind { REQ_FAULT, REQ_PIN, REQ_PREWARM, REQ_PREWARM_PIN };

struct prewarm;

struct request {
    enum req_kind kind;
    uint64_t owner;
    uint64_t token;
    uint32_t tensor;
    uint32_t pending;
    uint64_t start_ns;           /* REQ_FAULT: when it came (ec_hist_now_ns) */
    ec_engine_result res;
    struct prewarm *pw;          /* REQ_PREWARM*: whose progress this is */
    uint64_t parts;              /* REQ_PREWARM*: partitions it covers */
    struct request *next;        /* in a pin wait list */
};

/* A version being loaded ahead of traffic (see ec_engine_prewarm). */
struct prewarm {
    int64_t version_id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    uint32_t *tensors;
    uint32_t ntensors;
    uint32_t ti, pi;             /* cursor: next tensor, next partition (or hot row) */
    uint64_t **hot;              /* per tensor cached by rows: its hottest rows */
    uint64_t *nhot;
    uint64_t total, done, failed, bytes;
    unsigned outstanding;
    bool pin, finished;
    bool device;                 /* then promote it to the GPUs (EC_PREWARM_DEVICE) */
    char msg[EC_ERRMSG_MAX];     /* the first failure */
    struct prewarm *next;
};

/* A retire waiting for its version's reads in flight to finish. */
struct retire {
    uint64_t owner, token;
    int64_t version_id;
    char model[EC_NAME_MAX + 1];
    int64_t version;
    uint32_t *tensors;
    uint32_t ntensors;
    struct retire *next;
};

/* A partition waiting for room (see defer_partition). */
struct deferred {
    struct request *r;
    uint32_t tensor, part;
    struct deferred *next;
};

struct job {
    uint32_t tensor, part;
    struct tstate *ts;
    struct unit *unit;           /* the single unit, or the group */
    uint64_t dest;               /* from the data area */
    uint32_t length;
    ec_page_req req;             /* the pager's; result in req.rc / req.msg */
    char msg[EC_ERRMSG_MAX];     /* the error as clients see it */
    struct request **waiters;
    size_t nwaiters, capwaiters;
};

struct pin {
    uint64_t id;
    uint32_t tensor;
    struct unit *unit;
    int vj;                      /* its view journal slot, -1: none */
    struct pin *next;
};

struct owner {
    uint64_t id;
    pid_t pid;                   /* the client process (0: the daemon itself) */
    uint64_t start;              /* its start time (eng_proc_start), read at its
                                  * first pin; 0 until then */
    struct pin *pins;
};

/* A partition whose read failed (checksum, I/O): requests for it within
 * EC_FAILED_READ_S get the same error without another read, so a flood of
 * requests for one bad partition costs one read per interval. */
#define EC_FAILED_READ_S 2.0
struct failed_read {
    double until;
    int code;
    char msg[256];
};

/* Views recorded per segment (engine_views.c). */
#define EC_VIEW_JOURNAL_SLOTS 16384u
struct ec_view_journal;
struct vq;

struct ec_engine {
    ec_engine_config cfg;
    char data_dir[4096];
    int lock_fd;
    ec_catalog *cat;
    ec_segment seg;
    ec_extents *ext;
    uint64_t generation;
    ec_engine_notify_fn notify;
    void *notify_arg;

    ec_u64map tensors, resident, inflight, owners;
    ec_u64map failed;            /* index key -> struct failed_read: reads that just
                                  * failed, answered from here for a moment */
    struct unit **clock;
    size_t nclock, capclock, hand;
    struct deferred *deferred, **deferred_tail;
    size_t ttl_hand;
    uint64_t budget;
    uint64_t region_bytes;       /* ec_engine_region_alloc's, held now */
    struct prewarm *prewarms;
    struct retire *retires;
    ec_u64map versions;          /* version id -> struct vstate */
    double window_start;
    uint64_t next_pin;

    /* Pager: submit queue (server -> readers), done queue (readers -> server). */
    ec_pager *pager;
    uint64_t files_max, files_open, files_clock; /* engine_files.c */
    struct ec_names *names;      /* engine_names.c; NULL until the first resolve */
    ec_topology *topo;           /* NULL when hwloc could not load one */
    ec_devtier *dt;              /* the device tier (off: a no-op) */
    uint64_t (*min_epoch)(void *arg); /* least epoch clients hold */
    void *min_epoch_arg;
    int node;                    /* NUMA node of the data dir's device, or -1 */

    /* Rows (engine_rows.c). */
    ec_itemstore *items;         /* NULL: the segment has no item index */
    /* The cache manager's call when a result item leaves the store. */
    void (*result_unpublished)(void *arg, uint64_t key, uint64_t bytes);
    void *result_arg;
    ec_extents *staging;         /* of [staging_off, +staging_bytes): block reads */
    uint64_t staging_off, staging_bytes;
    ec_u64map row_inflight;      /* RUN_KEY -> struct rowjob */
    struct rowjob *stage_wait, **stage_tail; /* block reads waiting for staging room */
    uint64_t part_mode_bytes;    /* bytes of the tensors cached by partitions */
    double hot_saved;            /* when the access history was last written */
    uint64_t hot_saved_admitted;
    struct {
        uint64_t row_faults, row_coalesced, block_reads, block_bytes, rows_admitted,
            stage_waits, mode_switches;
    } rst;

    /* Views that outlive a worker (engine_views.c). */
    struct ec_view_journal *vj;
    bool vj_own;                 /* mapped by the engine (no keeper) */
    uint64_t vj_hint;
    double vj_checked;
    struct vq *vq;               /* ranges kept for a previous worker's views */
    size_t nvq, capvq;

    struct {
        uint64_t view_quarantined, view_released, failed_replays;
        uint64_t fault_requests, fault_parts, coalesced, page_ins, page_in_bytes,
            checksum_failures, read_errors, evictions, evicted_bytes, pins, unpins,
            restart_kept, restart_dropped, resolves, deferred, expirations,
            prewarm_done, prewarm_failed, retired_versions, refreshed_partitions,
            idle_evictions, idle_evicted_bytes, files_opened, files_closed,
            name_filter_builds, name_filter_refusals, name_answers_reused,
            name_catalog_queries, remote_submits, remote_local_refetches;
    } st;
    ec_hist fault_seconds;       /* a fault request, from its arrival to its answer */
    bool remote_keep;            /* remote reads write what they fetched into the files */
    uint64_t remote_keep_reserve; /* while the file system keeps this many bytes free */
    struct {                     /* engine_keep.c */
        uint64_t max;            /* remote-keep-max: kept bytes; 0: the reserve bounds them */
        uint32_t *todo;          /* lazily pulled tensors to open for the inventory */
        size_t ntodo, next;
        bool listed;             /* todo was read from the catalog */
        size_t hand;             /* the CLOCK's hand: a slot of `tensors` ... */
        uint64_t hand_p;         /* ... and a partition of that tensor */
        double checked;          /* when the disk was last looked at */
        bool due;                /* something was kept or skipped since: look now */
        bool cannot_punch;       /* the file system refused to punch a hole */
        uint64_t evictions, evicted_bytes;
    } keep;
    time_t started;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                       */

static inline double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static inline uint64_t page_round(uint64_t n)
{
    return (n + EC_SHM_PAGE - 1) / EC_SHM_PAGE * EC_SHM_PAGE;
}

/* Bitmaps of partitions (tstate's local and ref). */
static inline bool eng_bit(const uint8_t *map, uint64_t p)
{
    return (map[p >> 3] >> (p & 7)) & 1u;
}

static inline void eng_bit_set(uint8_t *map, uint64_t p)
{
    map[p >> 3] |= (uint8_t)(1u << (p & 7));
}

static inline void eng_bit_clr(uint8_t *map, uint64_t p)
{
    map[p >> 3] &= (uint8_t) ~(1u << (p & 7));
}

/* ------------------------------------------------------------------ */
/* Shared between the engine files; each comment names the file.       */

/* engine.c */
void eng_note_request(struct vstate *vs);
struct vstate *eng_vstate_of_tensor(const ec_engine *e, uint32_t tensor);
void eng_gauges(ec_engine *e);
void eng_result_error(ec_engine_result *r, int code, const char *msg);
void eng_tstate_free(struct tstate *ts);
struct vstate *eng_vstate_get(ec_engine *e, int64_t version_id, const char *model,
                              int64_t version);
int eng_tensor_get(ec_engine *e, uint32_t id, struct tstate **out);

/* engine_names.c */
int eng_names_resolve(ec_engine *e, const char *model, const char *voa, const char *tensor,
                      uint32_t *id);
void eng_names_close(ec_engine *e);

/* engine_files.c */
void eng_files_init(ec_engine *e);
int eng_files_open(ec_engine *e, struct tstate *ts);
void eng_files_adopt(ec_engine *e, struct tstate *ts, int fd);
void eng_files_close(ec_engine *e, struct tstate *ts);

/* engine_evict.c */
void eng_account(ec_engine *e, struct unit *u, int sign);
void eng_clock_add(ec_engine *e, struct unit *u);
void eng_extent_retire(ec_engine *e, uint64_t off, uint64_t bytes);
void eng_unit_drop(ec_engine *e, struct unit *u, bool evicted);
uint64_t eng_reclaim(ec_engine *e);
bool eng_room_coming(const ec_engine *e);
int eng_evict_one(ec_engine *e);
uint64_t eng_used_bytes(const ec_engine *e);
int eng_alloc_evicting(ec_engine *e, uint64_t bytes, uint64_t *off);
double eng_expiry_of(const ec_engine *e);
void eng_expire_some(ec_engine *e);
void eng_sweep_idle(ec_engine *e, double elapsed);

/* engine_fault.c */
void eng_request_put(ec_engine *e, struct request *r);
int eng_want_partition(ec_engine *e, struct tstate *ts, uint32_t p, struct request *r);
int eng_defer_partition(ec_engine *e, struct request *r, uint32_t tensor, uint32_t p);
void eng_retry_deferred(ec_engine *e);
void eng_pin_start(ec_engine *e, struct request *r);

/* engine_life.c */
void eng_prewarm_report(ec_engine *e, struct request *r);
void eng_prewarm_free(struct prewarm *pw);
void eng_retires_check(ec_engine *e);

/* engine_rows.c */
struct rowjob;
const char *eng_mode_name(ec_cache_mode m);
int eng_rows_open(ec_engine *e);
int eng_rows_adopt(ec_engine *e);
void eng_rows_close(ec_engine *e);
int eng_rows_decide(ec_engine *e, struct tstate *ts);
void eng_rows_forget(ec_engine *e, struct tstate *ts);
void eng_rows_reload(ec_engine *e, struct tstate *ts);
void eng_rows_switch(ec_engine *e, struct tstate *ts, ec_cache_mode m);
uint64_t eng_rows_drop_tensor(ec_engine *e, struct tstate *ts);
int eng_rows_want(ec_engine *e, struct tstate *ts, const uint64_t *ids, size_t n,
                  struct request *r);
void eng_rows_read_done(ec_engine *e, ec_page_req *req);
void eng_rows_drop_job(ec_page_req *req);
void eng_rows_touch(ec_engine *e, uint64_t hint);
void eng_rows_save_history(ec_engine *e, bool force);
int eng_rows_hot_load(ec_engine *e, const struct tstate *ts, uint64_t max, uint64_t **ids_out,
                      uint64_t *n_out);
uint64_t eng_rows_capacity(const ec_engine *e, const struct tstate *ts);
int eng_rows_stats(ec_engine *e, int (*cb)(const char *name, uint64_t v, void *arg), void *arg);

/* engine_remote.c */
int eng_remote_open(ec_engine *e, struct tstate *ts, int fd);
void eng_remote_free(struct tstate *ts);
void eng_remote_reset(ec_engine *e, struct tstate *ts);
void eng_remote_part(ec_engine *e, struct tstate *ts, uint32_t part, ec_page_req *r);
void eng_remote_blocks(ec_engine *e, struct tstate *ts, uint64_t first, uint32_t n,
                       ec_page_req *r);
void eng_remote_done(ec_engine *e, struct tstate *ts, const ec_page_req *r);
bool eng_remote_retry(ec_engine *e, struct tstate *ts, const ec_page_req *r);
void eng_remote_mark_remote(struct tstate *ts, uint64_t p);
int eng_remote_stats(ec_engine *e, int (*cb)(const char *name, uint64_t v, void *arg), void *arg);

/* engine_keep.c */
void eng_keep_due(ec_engine *e);
void eng_keep_tick(ec_engine *e);
void eng_keep_close(ec_engine *e);

/* engine_views.c */
size_t eng_views_journal_bytes(void);
uint64_t eng_proc_start(pid_t pid);
int eng_views_open(ec_engine *e);
void eng_views_close(ec_engine *e);
void eng_views_reset(ec_engine *e);
void eng_views_adopt(ec_engine *e);
void eng_views_tick(ec_engine *e, double now);
int eng_views_record(ec_engine *e, pid_t pid, uint64_t start, uint64_t off, uint64_t bytes);
void eng_views_forget(ec_engine *e, int slot);

/* engine_restart.c */
int eng_lock_data_dir(ec_engine *e);
int eng_open_segment(ec_engine *e);
int eng_adopt_segment(ec_engine *e);

#endif
