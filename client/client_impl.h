/*
 * client_impl.h - private to client/client*.c: the client's state and the
 * functions one client file defines and another calls. The interface is
 * include/embcache.h.
 *
 *   client.c         requests to the daemon, connect and close, tensors,
 *                    views and DLPack
 *   client_gather.c  the hit path: gathers into host memory, by partitions
 *                    or by rows, and the misses sent to the daemon
 *   client_device.c  gathers into GPU memory: device tier, slabs, epochs
 *   client_segmap.c  one mapping (and GPU registration) of a segment per
 *                    process, shared by its clients
 *   client_admin.c   administration: import, aliases, prewarm, retire,
 *                    policies, listings, statistics
 *   client_results.c cached results: namespaces, reads, writes, leases,
 *                    get_or_compute
 *   client_context.c context windows: chained block keys over results
 *   client_search.c  exact search; client_ivf.c / client_index.c the IVF
 *                    index: search through it, build it (search_impl.h)
 *
 * Runs inside inference processes, on any of their threads: the hit path
 * takes no lock; requests to the daemon hold the client's mutex.
 */
#ifndef EC_CLIENT_IMPL_H
#define EC_CLIENT_IMPL_H

#include <dlpack/dlpack.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/dtype.h"
#include "common/err.h"
#include "common/paths.h"
#include "core/proto.h"
#include "cuda/backend.h"
#include "embcache.h"
#include "shm/index.h"
#include "shm/items.h"
#include "shm/segment.h"

#define GATHER_MAX_ROUNDS 64

/* A daemon slab this client opened. Immutable once published: gathers on
 * other threads read it without the lock. */
struct cslab {
    uint64_t gen;                /* the slab generation it was opened at */
    void *base;                  /* the opened slab (device address) */
    uint64_t bytes;
    ec_segment view;             /* its device index, bounded by bytes */
    struct cslab *next;          /* every slab opened: closed at teardown, since
                                  * gathers queued earlier may still read one */
};

/* One GPU as this client sees it (set up on its first device gather, under
 * the client's lock; read by gathers without it). table, host_reads and
 * host_map are written before ready is stored (release). */
struct cdev {
    _Atomic bool ready;          /* set up (host memory registered, or not) */
    int table;                   /* the daemon's device table for this GPU, -1: none */
    uint32_t host_reads;         /* EC_HOST_READS_MAPPED: kernels read the segment
                                  * through host_map; _STAGED*: host rows are
                                  * copied through a pinned buffer */
    ec_host_map host_map;        /* the segment's chunks' device addresses */
    uint64_t epoch_dev;          /* device address of session->epoch_slot[0]:
                                  * the GPU clears a gather's slot itself;
                                  * 0: a host function does */
    struct cslab *_Atomic cur;   /* the slab in use, NULL: none */
    struct cslab *all;           /* guarded by the lock */
};

/* A private result arena this client mapped (read-only). Kept until the
 * client goes: handles of namespaces in it read it without the lock. */
struct carena {
    ec_segment seg;
    dev_t dev;
    ino_t ino;
    struct carena *next;
};

struct ec_client {
    _Atomic int refs;            /* the caller's, one per tensor and view */
    int sock;
    pthread_mutex_t lock;        /* one request at a time; guards sbuf/rbuf */
    uint32_t next_req;
    ec_segment seg;              /* read-only mapping, shared (segmap) */
    struct segmap *segmap;       /* the process's record of that mapping */
    ec_session_page *session;    /* our own page, read-write */
    bool session_registered;     /* registered with the GPUs (stream writes
                                  * of epoch slots); guarded by lock */
    uint64_t generation;
    uint64_t client_id;
    bool broken;                 /* the connection failed; only close remains */
    uint64_t forks;              /* cl_forks() when it connected */
    int pid;                     /* the process that connected */
    struct cdev dev[EC_SHM_MAX_DEVICES]; /* guarded by lock while set up */
    struct carena *arenas;       /* guarded by lock */
    int batch_fd;                /* memfd of large row batches, reused; -1; guarded by lock */
    char socket_path[108];
    uint8_t sbuf[EC_MSG_MAX];
    uint8_t rbuf[EC_MSG_MAX];
};

struct cl_ivf;

struct ec_tensor {
    ec_client *c;
    ec_proto_tensor t;
    ec_tensor_info info;
    _Atomic uint32_t mode;       /* how the daemon caches it, as it last said */
    ec_session_tensor *tstat;    /* its counters in our session page, or NULL */
    struct cl_ivf *_Atomic ivf;  /* its IVF index, mapped by the first approximate
                                  * search (client_ivf.c); NULL: not yet */
};

struct ec_view {
    _Atomic int refs;            /* the caller's, one per DLPack export */
    ec_client *c;
    uint64_t pin;
    const void *data;
    size_t size;
    ec_dtype dtype;
    uint32_t ndim;
    int64_t shape[EC_MAX_DIMS];
};

/* client.c */
const ec_backend *cl_be(void);
/* How many times this process has been forked into (0 in the process that
 * started; a child's count is its parent's plus one). */
uint64_t cl_forks(void);
int cl_stale(const ec_client *c);
uint32_t cl_begin(ec_client *c, ec_wbuf *w, uint16_t op);
int cl_rpc(ec_client *c, ec_wbuf *w, uint32_t req_id, const int *fds, int nfds, ec_rbuf *body,
           int *rfds, int *nrfds, int maxrfds);
void cl_client_unref(ec_client *c);

/* Per-thread scratch for gathers, kept between calls so the hit path does
 * not allocate. */
struct scratch {
    size_t cap;
    const void **src;
    size_t *dst_rows;
    uint32_t *row_ref;
    size_t *todo;
    size_t *next;
    ec_index_ref *refs;
    uint32_t *parts;
    ec_item_hash *hash;          /* rows: each row's buckets and tag */
    ec_item_ref *irefs;          /* rows: the items found */
    uint64_t *keys;              /* rows: item keys */
    uint64_t *fids;              /* rows: ids to fault */
    uint32_t hint_seen[1024];    /* rows: the last item hinted per hash slot */
};

/* client_gather.c */
struct scratch *cl_scratch_get(size_t n);
int cl_fault(ec_tensor *t, uint32_t *parts, size_t n);
void cl_note_accesses(ec_client *c, const ec_index_ref *refs, size_t n);
/* The same hints as index keys (EC_INDEX_KEY). */
void cl_note_keys(ec_client *c, const uint64_t *keys, size_t n);
void cl_count(_Atomic uint64_t *ctr, uint64_t v);
int cl_gather_check(const ec_tensor *t, const int64_t *ids, size_t n, size_t out_size,
                    ec_dtype dst);
/* EC_ERANGE naming ids[i] = id and the tensor's rows. */
int cl_id_range_error(const ec_tensor *t, size_t i, int64_t id);
int cl_gather_host(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst);
/* client_dyn.c: rows of a dynamic table by key (EC_ENOENT for an absent
 * key). */
int cl_gather_dyn(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst);

/* client_results.c */
struct ec_results {
    ec_client *c;
    uint32_t slot;
    uint64_t salt;
    const ec_segment *seg;       /* where its records are: c->seg or an arena */
    bool private_ns;
    ec_session_ns *stat;         /* our counts in the session page, or NULL */
    char name[EC_NS_NAME_MAX + 1];
};

/* client_ivf.c: unmap a tensor's IVF index (NULL: nothing) */
void cl_ivf_release(struct cl_ivf *x);

/* client_segmap.c: the process's read-only mapping of the segment behind
 * fd, shared with its other clients of the same segment. *out is a copy
 * (fd -1); release with cl_segmap_release once no GPU gather reads it. */
struct segmap;
int cl_segmap_acquire(int fd, ec_segment *out, struct segmap **handle);
void cl_segmap_release(struct segmap *m);
/* How kernels on GPU `dev` read host rows of the segment
 * (EC_HOST_READS_*), decided once per process and GPU: registered
 * read-only and mapped (*map receives the chunks' device addresses) when
 * readonly_ok and the registration succeeds, else staged. Logs the
 * decision's reason once. */
uint32_t cl_segmap_host_reads(struct segmap *m, int dev, bool readonly_ok, ec_host_map *map);

/* client_device.c */
bool cl_epochs_drained(ec_client *c);
/* Announce a device gather's epoch (layout.h "Device reads"): the slot it
 * holds, or NULL (message set) when all stayed taken for about 5 s.
 * cl_epoch_exit gives it back (its argument: the slot). */
_Atomic uint64_t *cl_epoch_enter(ec_client *c);
void cl_epoch_exit(void *slot);
/* The slab of GPU d to read now: the one this client opened, while the
 * header still publishes its generation (read with an epoch held); NULL:
 * none. */
const struct cslab *cl_slab_now(const ec_client *c, const struct cdev *d);
int cl_device_ready(ec_client *c, int dev);
/* Refuse a GPU gather on a stream that is being captured into a CUDA graph
 * (before any call that capture forbids). 0 or EC_EINVAL. */
int cl_device_stream_check(int dev, void *stream);
int cl_gather_device(ec_tensor *t, const int64_t *ids, size_t n, void *out, ec_dtype dst,
                     const ec_gather_opts *o);

/* client_resolve.c: a gather whose ids are on the GPU, rows found by the
 * GPU. 0, an error, or CL_NOT_HERE: the batch (or this tensor, GPU or
 * backend) needs the host-resolved path (cl_gather_device). */
#define CL_NOT_HERE 1
int cl_gather_device_ids(ec_tensor *t, const int64_t *ids, size_t n, void *out,
                         size_t out_size, ec_dtype dst, const ec_gather_opts *o);

#endif
