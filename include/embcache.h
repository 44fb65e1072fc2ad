/*
 * embcache.h - the public C API of libembcache.
 *
 * embcache keeps embedding tables, model weights and cached results in one
 * POSIX shared-memory segment owned by the host daemon, embcached. A client
 * process connects to the daemon once over a Unix socket, receives the
 * segment as a read-only file descriptor, and from then on reads resident
 * rows straight out of shared memory: a hit costs no system call and no
 * round trip. Misses are sent to the daemon in one request per call; the
 * daemon pages the partitions in (one read per partition however many
 * clients asked) and answers when they are resident.
 *
 * Conventions (see each function for its own list):
 *  - Every function that can fail returns int: 0 on success or a negative
 *    EC_E* code. ec_strerror() names a code; ec_last_error() gives the
 *    calling thread's message for its last failure, which says what failed,
 *    with what input, and what to do next.
 *  - Output parameters come last and are written only on success.
 *  - Handles are opaque. An ec_client may be shared by any number of threads:
 *    the hit path takes no lock; requests to the daemon are serialized per
 *    client. An ec_tensor may be used by many threads at once. An ec_view is
 *    read-only and may be read by any thread until released.
 *
 * Lifetimes: tensors and views hold a reference to the client they came
 * from; ec_client_close() drops the caller's, and the connection is torn
 * down when the last handle is released. Strings returned inside info
 * structs stay valid as long as the handle they came from.
 */
#ifndef EMBCACHE_H
#define EMBCACHE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(EMBCACHE_BUILDING) && defined(__GNUC__)
#define EC_API __attribute__((visibility("default")))
#else
#define EC_API
#endif

#define EC_VERSION_MAJOR 0
#define EC_VERSION_MINOR 1
#define EC_VERSION_PATCH 0
#define EC_VERSION_STRING "0.1.0"

/** Most dimensions a tensor may have. */
#define EC_MAX_DIMS 8
/** Longest model, tensor or alias name, in bytes, without the NUL. */
#define EC_NAME_MAX 255

/*
 * Error codes. Primary codes are negative; 0 is success.
 */
#define EC_OK          0
#define EC_EINVAL     -1  /**< an argument is invalid (NULL, zero, too long) */
#define EC_ENOMEM     -2  /**< out of memory in this process */
#define EC_EIO        -3  /**< an I/O call failed; the message carries errno */
#define EC_ENOENT     -4  /**< no such model, version, alias or tensor */
#define EC_ERANGE     -5  /**< a row id is outside the tensor */
#define EC_ECHECKSUM  -6  /**< stored data failed its checksum; never served */
#define EC_EPROTO     -7  /**< malformed or unexpected protocol message */
#define EC_ECONN      -8  /**< the daemon is unreachable or went away */
#define EC_EEXIST     -9  /**< already exists (a duplicate model version) */
#define EC_EFORMAT   -10  /**< an input file cannot be imported (malformed, unreadable) */
#define EC_EDTYPE    -11  /**< a dtype embcache does not support */
#define EC_ENOSPC    -12  /**< no room: segment full and nothing evictable */
#define EC_EPERM     -13  /**< not allowed (peer credentials, file owner) */
#define EC_EBUSY     -14  /**< in use (another daemon holds the data dir) */
#define EC_ESTALE    -15  /**< the daemon restarted; reconnect */
#define EC_EVERSION  -16  /**< protocol or layout version mismatch */
#define EC_ETOOBIG   -17  /**< a request or message exceeds a limit */
#define EC_EINTERNAL -18  /**< an invariant failed; a bug, please report */
#define EC_ECORRUPT  -19  /**< shared segment or file failed validation */
#define EC_EDEVICE   -20  /**< a GPU call failed: wrong device, device lost, out of memory */
#define EC_ETIMEOUT  -21  /**< waited as long as allowed (another's computation) */
#define EC_E_LAST    -21

/** Supported element types. Values are stable: they go on disk and wire. */
typedef enum ec_dtype {
    EC_DTYPE_INVALID = 0,
    EC_DTYPE_F32 = 1,
    EC_DTYPE_F16 = 2,
    EC_DTYPE_BF16 = 3,
    EC_DTYPE_F64 = 4,
    EC_DTYPE_I8 = 5,
    EC_DTYPE_U8 = 6,
    EC_DTYPE_I32 = 7,
    EC_DTYPE_I64 = 8,
} ec_dtype;

/**
 * How embcached caches a tensor. Values are stable: they go on disk and wire.
 *  - PARTITIONS: by whole partitions (about 1 MiB of rows each), indexed per
 *    partition: the cheapest hits, for tensors that fit in memory.
 *  - ROWS: by rows, in the item store, with misses read as the 4 KiB blocks
 *    that hold them: for tensors larger than their share of memory.
 *  - AUTO: the daemon picks from the tensor's size and the budget.
 */
typedef enum ec_cache_mode {
    EC_CACHE_AUTO = 0,
    EC_CACHE_PARTITIONS = 1,
    EC_CACHE_ROWS = 2,
    EC_CACHE_DYNAMIC = 3,  /**< a dynamic table: rows by int64 key, updated
                            *   online (embcache_dynamic.h); never a policy */
} ec_cache_mode;

typedef struct ec_client ec_client;
typedef struct ec_tensor ec_tensor;
typedef struct ec_view ec_view;
struct DLManagedTensor; /* dlpack/dlpack.h */

/** Describes a resolved tensor. Strings live as long as the ec_tensor. */
typedef struct ec_tensor_info {
    const char *model;            /**< model name */
    const char *tensor;           /**< tensor name */
    int64_t version;              /**< the concrete version an alias led to */
    ec_dtype dtype;
    uint32_t ndim;                /**< 0..EC_MAX_DIMS */
    uint64_t shape[EC_MAX_DIMS];  /**< row-major; shape[0] is the row count */
    uint64_t rows;                /**< shape[0], or 1 for a scalar */
    uint64_t row_bytes;           /**< bytes of one row */
    uint64_t rows_per_partition;
    uint64_t partitions;
} ec_tensor_info;

/** One model version, as listed by ec_catalog_list(). Valid during the callback. */
typedef struct ec_version_info {
    const char *model;
    int64_t version;
    int64_t round;                /**< training round; -1 when not given */
    const char *params_json;      /**< "{}" when not given */
    const char *aliases;          /**< comma-separated, "" when none */
    int64_t created_unix;
    uint32_t tensors;
    uint64_t bytes;               /**< sum of the tensors' data bytes */
} ec_version_info;

/** One tensor of a version, as listed by ec_catalog_list(). */
typedef struct ec_tensor_listing {
    const char *name;
    ec_dtype dtype;
    uint32_t ndim;
    uint64_t shape[EC_MAX_DIMS];
    uint64_t partitions;
    uint64_t bytes;
} ec_tensor_listing;

/**
 * Called once per version, then once per tensor of that version (tensor is
 * NULL on the version's own call). Return non-zero to stop the listing; that
 * value is then returned by ec_catalog_list().
 */
typedef int (*ec_list_cb)(const ec_version_info *version,
                          const ec_tensor_listing *tensor, void *arg);

/** Called once per statistic; return non-zero to stop. */
typedef int (*ec_stat_cb)(const char *name, uint64_t value, void *arg);

/** One tensor the daemon has open, as ec_client_tensor_stats() reports it.
 *  Strings are valid during the callback. */
typedef struct ec_tensor_stats {
    const char *model;
    int64_t version;
    const char *tensor;
    ec_cache_mode mode;           /**< how it is cached now: PARTITIONS or ROWS */
    ec_cache_mode policy;         /**< what its policy asks; AUTO: the daemon decides */
    uint32_t file_version;        /**< of its partition file (1: no block checksums) */
    uint64_t bytes;               /**< of the whole tensor */
    uint64_t row_bytes;
    uint64_t resident_bytes;      /**< of it in memory now (rows: with their keys) */
    uint64_t resident_rows;
    uint64_t rows_served;         /**< rows clients gathered (as they report it) */
    uint64_t hits;                /**< of those, found in memory at their first lookup */
    uint64_t row_faults;          /**< rows clients asked the daemon for (rows mode) */
    uint64_t bytes_read;          /**< read from its file: partitions or blocks */
} ec_tensor_stats;

/** Called once per tensor; return non-zero to stop. */
typedef int (*ec_tensor_stats_cb)(const ec_tensor_stats *t, void *arg);

/** Options for ec_model_import(). Zero-initialize, then set what you need. */
typedef struct ec_import_opts {
    const char *model;            /**< required */
    int64_t version;              /**< required, >= 1 */
    int64_t round;                /**< training round; -1 for none */
    const char *params_json;      /**< NULL for "{}"; must be a JSON object */
    uint64_t partition_bytes;     /**< target partition size; 0 for 1 MiB */
} ec_import_opts;

/* ------------------------------------------------------------------ */
/* Errors and dtypes                                                   */

/** Name of an error code ("EC_ENOENT: not found"). Never NULL; static. */
EC_API const char *ec_strerror(int err);

/**
 * The calling thread's message for its most recent failed embcache call.
 * Valid until that thread's next embcache call. Never NULL ("" if none).
 */
EC_API const char *ec_last_error(void);

/** "f32", "f16", ... or NULL for an invalid dtype. */
EC_API const char *ec_dtype_name(ec_dtype dtype);

/** Size in bytes of one element, or 0 for an invalid dtype. */
EC_API size_t ec_dtype_size(ec_dtype dtype);

/** The library's version string, e.g. "0.1.0". */
EC_API const char *ec_version(void);

/* ------------------------------------------------------------------ */
/* Connection                                                          */

/**
 * Connect to embcached and map its segment read-only.
 *
 * @param[in]  socket_path  the daemon's socket; NULL means $EMBCACHE_SOCKET,
 *                          then the default (/run/embcache/embcached.sock as
 *                          root, $XDG_RUNTIME_DIR/embcache.sock or
 *                          /tmp/embcache-$UID/embcached.sock otherwise; when
 *                          that does not exist and the system service's
 *                          /run/embcache/embcached.sock does, that one).
 * @param[out] out          the new client, to be closed with ec_client_close().
 * @return 0, or EC_EINVAL, EC_ENOMEM, EC_ECONN (no daemon: the message names
 *         the socket and how to start one), EC_EPERM (the daemon refused our
 *         credentials), EC_EVERSION, EC_EPROTO, EC_ECORRUPT (the segment
 *         failed validation).
 * Thread safety: the new client may be used from any thread.
 */
EC_API int ec_client_connect(const char *socket_path, ec_client **out);

/** Close a client: unmaps the segment, drops the daemon's pins for it. NULL is fine. */
EC_API void ec_client_close(ec_client *c);

/**
 * The generation of the daemon this client is attached to. A restarted
 * daemon has a new generation; calls on the old connection fail with
 * EC_ESTALE and the client must be closed and connected again.
 */
EC_API uint64_t ec_client_generation(const ec_client *c);

/* ------------------------------------------------------------------ */
/* Tensors                                                             */

/**
 * Resolve (model, version or alias, tensor) to a tensor handle.
 *
 * @param[in]  version  a decimal version number ("3") or an alias ("current").
 * @param[out] out      the tensor, to be released with ec_tensor_release().
 * @return 0, or EC_EINVAL, EC_ENOMEM, EC_ENOENT (unknown model, version,
 *         alias or tensor), EC_ECONN, EC_ESTALE, EC_EPROTO, EC_EIO (the
 *         tensor's partition file cannot be opened), EC_ECORRUPT.
 * The handle keeps the version it resolved to: switching an alias later
 * does not change what an existing handle reads.
 */
EC_API int ec_tensor_resolve(ec_client *c, const char *model, const char *version,
                             const char *tensor, ec_tensor **out);

/** Release a tensor handle. NULL is fine. */
EC_API void ec_tensor_release(ec_tensor *t);

/** Describe a tensor. @return 0 or EC_EINVAL. Strings live as long as t. */
EC_API int ec_tensor_info_get(const ec_tensor *t, ec_tensor_info *out);

/**
 * How the daemon caches t, as its last answer to this handle said:
 * EC_CACHE_PARTITIONS or EC_CACHE_ROWS (a gather follows a change by
 * itself). Thread-safe.
 */
EC_API ec_cache_mode ec_tensor_cache_mode(const ec_tensor *t);

/**
 * Copy rows ids[0..n) of t into out, row after row (n * row_bytes bytes).
 *
 * Resident rows are copied straight from shared memory with no system call;
 * the partitions that miss are requested from the daemon in one message and
 * the copy finishes when they are resident. A copy is checked against the
 * index entry's sequence after it is made, so a row is never returned torn
 * or from a reused extent.
 *
 * @param[in]  ids       row ids, each in [0, rows)
 * @param[in]  n         number of ids; 0 is a no-op
 * @param[out] out       destination; out_size must be >= n * row_bytes
 * @return 0, or EC_EINVAL, EC_ERANGE (an id is out of range: the message
 *         names its position and value), EC_ECHECKSUM, EC_EIO, EC_ENOSPC,
 *         EC_ECONN, EC_ESTALE, EC_EPROTO. On failure the contents of out
 *         are unspecified.
 * Thread safety: any number of threads may gather from one tensor at once.
 */
EC_API int ec_tensor_gather(ec_tensor *t, const int64_t *ids, size_t n,
                            void *out, size_t out_size);

/** ec_gather_opts.flags */
#define EC_GATHER_OUT_DEVICE 0x1u /**< out is device memory of GPU opts.device */
#define EC_GATHER_IDS_DEVICE 0x2u /**< ids are device memory of GPU opts.device */

/**
 * Options of ec_tensor_gather_ex(). Zero-initialize, then set what you need:
 * all zero is ec_tensor_gather() (host output, the tensor's own dtype).
 */
typedef struct ec_gather_opts {
    uint32_t flags;      /**< EC_GATHER_* */
    int32_t device;      /**< the CUDA device ordinal of out (and ids) */
    void *stream;        /**< the caller's cudaStream_t; NULL: the default stream */
    ec_dtype out_dtype;  /**< EC_DTYPE_INVALID: the tensor's dtype; F16 or
                          *   BF16 from an F32 tensor: converted (round to
                          *   nearest even) */
} ec_gather_opts;

/**
 * ec_tensor_gather() with the output (and optionally the ids) on a GPU and
 * an optional dtype conversion.
 *
 * With EC_GATHER_OUT_DEVICE the rows land in device memory of opts->device
 * by one kernel launch on opts->stream (more only when the rows of one call
 * do not fit in memory at once), whatever mix of tiers they come from: rows resident in the device tier are read from the daemon's slab
 * (CUDA IPC), rows resident in host memory are read over PCIe from the
 * mapped segment, and the rest are faulted in through the daemon first.
 * The call returns once the kernel is queued; the rows are in `out` when
 * the stream reaches that point (synchronize the stream, or queue the
 * consumer on it). Memory the kernel reads stays valid until it has run:
 * the call does not synchronize the device. With EC_GATHER_IDS_DEVICE the
 * ids are first copied to the host, which waits for the stream.
 *
 * out_size is in bytes of the output dtype: n * row elements * its size.
 *
 * @return 0, or the codes of ec_tensor_gather(), and EC_EINVAL (out is not
 *         device memory of opts->device, or a GPU output when this process
 *         runs the CPU backend: the message says which), EC_EDTYPE (a
 *         conversion other than F32 to F16/BF16), EC_EDEVICE (a CUDA call
 *         failed; the message carries CUDA's error), EC_EBUSY (64 GPU gathers
 *         of this client are still running after 5 s).
 * Thread safety: as ec_tensor_gather(); up to 64 GPU gathers per client may
 * be in flight at once.
 */
EC_API int ec_tensor_gather_ex(ec_tensor *t, const int64_t *ids, size_t n, void *out,
                               size_t out_size, const ec_gather_opts *opts);

/**
 * The device backend this client runs: "cuda" when libembcache was built
 * with CUDA and this process sees a GPU, else "cpu". EMBCACHE_BACKEND=cpu
 * forces the CPU backend. Never NULL. The backend is chosen on first use
 * (this call, ec_client_device_count() or a GPU gather), not at connect:
 * choosing CUDA initializes it, which a process that fork()s afterwards
 * must not have done.
 */
EC_API const char *ec_client_backend(const ec_client *c);

/** GPUs this client can gather to (0 with the CPU backend). */
EC_API int ec_client_device_count(const ec_client *c);

/**
 * The machine as the daemon found it, on one line: packages, NUMA nodes,
 * cores, the GPUs and block devices with their NUMA nodes, then the
 * daemon's device backend and each GPU's device tier, e.g.
 * "2 package(s), 2 NUMA node(s), ...; 1 GPU(s): 0000:3b:00.0 (node 1); ...;
 * backend cuda; GPU 0: 8192 MiB slab, NUMA node 1".
 * @return 0, or EC_EINVAL, EC_ETOOBIG (cut to len - 1 bytes), EC_ECONN.
 */
EC_API int ec_client_topology(ec_client *c, char *buf, size_t len);

/**
 * Pin the whole tensor in shared memory as one contiguous, read-only,
 * row-major region, and return a view of it. The daemon loads what is not
 * resident, keeps the region resident while the view is held and drops the
 * pin when the view is released or this client's connection closes. A
 * process stopped (SIGSTOP, a debugger) for longer than the daemon's
 * --pin-lease while it holds views loses them (see ec_view_check()).
 *
 * @param[out] out  the view, to be released with ec_view_release().
 * @return 0, or EC_EINVAL, EC_ENOMEM, EC_ENOSPC (the segment cannot hold the
 *         tensor contiguously), EC_ECHECKSUM, EC_EIO, EC_ECONN, EC_ESTALE.
 */
EC_API int ec_tensor_view(ec_tensor *t, ec_view **out);

/** The view's first byte. Read-only; valid until ec_view_release(). */
EC_API const void *ec_view_data(const ec_view *v);

/** The view's size in bytes (rows * row_bytes). */
EC_API size_t ec_view_size(const ec_view *v);

/**
 * Is the view still backed by the running daemon? No system call: compares
 * the daemon generation in the segment with the view's.
 * @return 0, or EC_EINVAL (NULL), EC_ESTALE (the daemon restarted, or it
 *         revoked this client's views because the process was stopped for
 *         longer than its --pin-lease: the pin is gone and the memory may be
 *         reused; release the view and take a new one from a new client).
 */
EC_API int ec_view_check(const ec_view *v);

/** Release a view and its pin. NULL is fine. */
EC_API void ec_view_release(ec_view *v);

/**
 * Export a view as a DLPack tensor (dlpack/dlpack.h, legacy
 * DLManagedTensor): CPU device, the tensor's dtype and shape, row-major,
 * strides NULL. The returned tensor holds its own reference to the view's
 * pin: the view may be released before the DLPack tensor's deleter runs,
 * and the client may be closed before either (it is torn down when the
 * last of its handles goes). The memory is read-only (mapped PROT_READ):
 * a consumer that writes it faults.
 * @param[out] out  the managed tensor; the consumer calls its deleter.
 * @return 0, or EC_EINVAL, EC_ENOMEM, EC_EDTYPE (no DLPack type).
 */
EC_API int ec_view_dlpack(ec_view *v, struct DLManagedTensor **out);

/* ------------------------------------------------------------------ */
/* Catalog and administration                                          */

/**
 * Import .npy and .safetensors files as a new model version.
 *
 * The files are opened here, with this process's permissions, and passed
 * to the daemon as file descriptors; the daemon writes partition files and
 * registers the version in one catalog transaction. A .npy file becomes one
 * tensor named after the file's stem; a .safetensors file keeps its tensors'
 * names. On any failure nothing is registered and no file is left behind.
 *
 * @param[in]  paths, n       the files (1..64)
 * @param[out] tensors_out    number of tensors imported; may be NULL
 * @return 0, or EC_EINVAL, EC_EEXIST (that version exists), EC_ENOENT (an
 *         input file does not exist), EC_EFORMAT (an input file cannot be
 *         imported as it is: not readable by this process, not a regular
 *         file, malformed or truncated, over a limit such as 8 dimensions
 *         or a row of 4 GiB, a name that is not a valid tensor name, or a
 *         tensor name that two files give), EC_EDTYPE (an unsupported
 *         dtype), EC_EIO (a read failed), EC_ENOSPC (data directory full),
 *         EC_ECONN, EC_ETOOBIG (params JSON too long). Every message about
 *         an input file names it.
 */
EC_API int ec_model_import(ec_client *c, const ec_import_opts *opts,
                           const char *const *paths, size_t n,
                           uint32_t *tensors_out);

/**
 * Point alias at (model, version). Atomic for clients: a handle resolved
 * before keeps its version; the next resolve sees the new one.
 * An alias is a name that is not a number ("current", "canary").
 * @return 0, or EC_EINVAL, EC_ENOENT (no such model version), EC_ECONN.
 */
EC_API int ec_model_alias(ec_client *c, const char *model, const char *alias,
                          int64_t version);

/** Flags of ec_model_prewarm(). */
#define EC_PREWARM_PIN 0x1u  /**< keep the version resident until evicted or retired */
#define EC_PREWARM_DEVICE 0x2u /**< also promote the version into every GPU's device tier */

/** Progress of a prewarm, as ec_model_prewarm() reports it. Units are
 *  partitions, and rows for tensors cached by rows. */
typedef struct ec_prewarm_progress {
    int64_t version;        /**< the concrete version */
    uint64_t partitions;    /**< units to load */
    uint64_t done;          /**< loaded (or already resident) */
    uint64_t failed;        /**< could not be loaded (see ec_last_error()) */
    uint64_t bytes;         /**< bytes of the version */
    int finished;           /**< 1 when nothing is left to do */
} ec_prewarm_progress;

/**
 * Load a model version into the segment in the background, ahead of
 * traffic, with reads queued behind clients' demand reads. Returns at once;
 * call again with the same arguments to read the progress (a call after the
 * previous prewarm finished starts a new one). With EC_PREWARM_PIN the
 * version's tensors are pinned (each laid out contiguously) and never
 * evicted until ec_model_evict() or ec_model_retire(). A tensor cached by
 * rows is not read whole: its hottest rows are, as the daemon's access
 * history (kept in the data directory, across restarts) names them, up to
 * what its share of the budget holds; with no history yet, none.
 * @return 0, or EC_EINVAL, EC_ENOENT (no such model or version), EC_ENOSPC
 *         (a pinned prewarm cannot fit in the budget), EC_ECONN.
 */
EC_API int ec_model_prewarm(ec_client *c, const char *model, const char *version,
                            unsigned flags, ec_prewarm_progress *out);

/**
 * Drop a version's resident partitions from memory (its prewarm pin too).
 * Partitions held by clients' views stay. The version stays in the catalog
 * and pages in again on demand.
 * @param[out] bytes_out  bytes freed; may be NULL
 * @return 0, or EC_EINVAL, EC_ENOENT, EC_ECONN.
 */
EC_API int ec_model_evict(ec_client *c, const char *model, const char *version,
                          uint64_t *bytes_out);

/**
 * Retire a version: refuse new reads of it, let reads in flight finish, drop
 * its partitions, remove it from the catalog and delete its partition files.
 * A version an alias points to is refused unless force is non-zero (the
 * aliases are then removed with it); a version a client holds a view of is
 * refused with EC_EBUSY.
 * @return 0, or EC_EINVAL, EC_ENOENT, EC_EBUSY, EC_EPERM (an alias points to
 *         it and force is 0), EC_ECONN.
 */
EC_API int ec_model_retire(ec_client *c, const char *model, int64_t version, int force);

/**
 * Re-read a version's partition files and reload the partitions whose
 * contents changed on disk (detected by the files' size, modification time
 * and checksums); the catalog takes the new checksums. A file whose layout
 * changed (dtype, shape, partitioning) is refused: import it as a new
 * version.
 * @param[out] changed_out  partitions that changed; may be NULL
 * @return 0, or EC_EINVAL, EC_ENOENT, EC_ECORRUPT, EC_EFORMAT, EC_EBUSY
 *         (a changed partition is held by a view), EC_ECONN.
 */
EC_API int ec_model_refresh(ec_client *c, const char *model, const char *version,
                            uint64_t *changed_out);

/**
 * Rewrite a version's partition files of format version 1 (written before
 * block checksums existed) as version 2, so its tensors can be cached by
 * rows; each file is verified partition by partition before the new one
 * replaces it, and the version then takes the new files. Takes as long as
 * reading and writing the files; the daemon serves everyone meanwhile.
 * @param[out] upgraded_out  files rewritten (0: all were version 2); may be NULL
 * @return 0, or EC_EINVAL, EC_ENOENT, EC_ECHECKSUM (a partition of an old
 *         file is damaged: nothing replaces it; re-import the version),
 *         EC_EIO, EC_ENOSPC, EC_ECONN.
 */
EC_API int ec_model_upgrade(ec_client *c, const char *model, const char *version,
                            uint32_t *upgraded_out);

/**
 * Have the daemon read its configuration again (its file and command line)
 * and apply what may change while it runs, as SIGHUP does, and answer once
 * that is done. Admin only.
 * @param[out] summary  the line the daemon logs ("config reloaded from
 *                      FILE: budget 1G -> 2G; not applied (restart
 *                      needed): shm-size"), NUL-terminated, cut to cap;
 *                      may be NULL.
 * @return 0, or EC_EINVAL (the configuration is invalid: nothing changed;
 *         the message gives its first error), EC_EPERM, EC_ECONN.
 */
EC_API int ec_daemon_reload(ec_client *c, char *summary, size_t cap);

/** What ec_model_publish(), ec_model_pull() or ec_model_unpublish() did. */
typedef struct ec_publish_result {
    int64_t version;   /**< the concrete version */
    uint32_t tensors;  /**< tensors of the version */
    uint64_t bytes;    /**< tensor bytes sent to or read from the cluster (unpublish:
                            removed from it) */
} ec_publish_result;

/**
 * Copy a model version to a Redis Cluster, so that daemons on other hosts
 * can pull it (ec_model_pull). The daemon reads each tensor's partition
 * files, checks every partition against the catalog's checksum, writes
 * the partitions in chunks of at most 1 MiB with their checksums, then a
 * manifest (the catalog entry: round, params, created time, tensors,
 * partition checksums) last, so a reader never finds a manifest whose
 * chunks are not all there. Publishing a version again replaces it, and
 * then deletes the keys of the earlier publish that the new one did not
 * write over (it had more tensors, partitions or chunks).
 * Admin only; runs on the daemon's importer thread (the daemon serves
 * everyone meanwhile; other imports wait). Blocks until done.
 * @param c            a connected client; one call at a time per client.
 * @param model        model name.
 * @param version      a version number or an alias.
 * @param cluster_url  "redis-cluster://host:port[,host:port...]" (or the
 *                     same list without the scheme), as the daemon sees it;
 *                     NULL or "": the daemon's --remote (EC_EINVAL without one).
 * @param[out] out     written on success only; may be NULL.
 * @return 0, or EC_EINVAL (bad argument or URL, a dynamic table: publish a
 *         snapshot; a version pulled lazily whose partitions are not all on
 *         this host's disk yet), EC_ENOENT (no such version), EC_EDTYPE, EC_ECHECKSUM /
 *         EC_EIO (a local partition file), EC_ECONN, EC_ETIMEOUT, EC_EBUSY,
 *         EC_EPROTO (the cluster, or the daemon's connection), EC_EPERM.
 *         On failure the version's old manifest on the cluster, if any,
 *         is left as it was.
 */
EC_API int ec_model_publish(ec_client *c, const char *model, const char *version,
                            const char *cluster_url, ec_publish_result *out);

/**
 * Register a model version published on a Redis Cluster (ec_model_publish)
 * in this daemon, without its source files: the daemon reads and validates
 * the manifest (it is another host's data), reads every chunk, checks
 * every partition against the manifest's checksum, imports the tensors
 * with the same partitions, and checks the catalog's partition checksums
 * against the manifest. Nothing is registered unless every byte matched.
 * Admin only; runs on the importer thread; blocks until done.
 * @param version      a version number (aliases are per host).
 * @param[out] out     written on success only; may be NULL.
 * @return 0, or EC_EINVAL, EC_EEXIST (the version exists here: retire it
 *         first), EC_ENOENT (not published), EC_EFORMAT / EC_EVERSION (a
 *         manifest that fails validation), EC_ECHECKSUM (a chunk missing or
 *         damaged: the message names tensor, partition and chunk), EC_ENOSPC,
 *         EC_EIO, EC_ECONN, EC_ETIMEOUT, EC_EBUSY, EC_EPROTO, EC_EPERM.
 */
EC_API int ec_model_pull(ec_client *c, const char *model, const char *version,
                         const char *cluster_url, ec_publish_result *out);

/**
 * Remove a model version from a Redis Cluster (what ec_model_publish put
 * there): every chunk and file head its manifest names, then the manifest,
 * and that only while it is still the one read at the start. Daemons that
 * pulled it whole keep it; daemons that pulled it lazily fail the reads of
 * partitions they had not kept (EC_ECHECKSUM: missing on the cluster).
 * Interrupted (the cluster went away), it leaves the manifest: call it
 * again. Admin only; runs on the daemon's importer thread; blocks until
 * done.
 * @param version      a version number (aliases are per host).
 * @param[out] out     written on success only; may be NULL. out->bytes:
 *                     the tensor bytes removed.
 * @return 0, or EC_EINVAL (bad argument or URL), EC_ENOENT (not published
 *         there), EC_EFORMAT / EC_EVERSION (its manifest fails validation:
 *         nothing was deleted), EC_EBUSY (published again meanwhile: the
 *         new manifest is kept), EC_ECONN, EC_ETIMEOUT, EC_EPROTO, EC_EPERM.
 */
EC_API int ec_model_unpublish(ec_client *c, const char *model, const char *version,
                              const char *cluster_url, ec_publish_result *out);

/** ec_model_pull_flags(): register the version at once and leave its data
 *  on the cluster until it is read. */
#define EC_PULL_LAZY 0x1u

/**
 * ec_model_pull() with flags. With EC_PULL_LAZY the daemon reads only the
 * manifest and each tensor's partition file head (header, partition and
 * block tables; published by embcache since manifest format 2), validates
 * them as it validates any partition file, writes them as sparse partition
 * files and registers the version. Its partitions are then read from the
 * cluster when a client first needs them (verified against the same
 * checksums, and kept in the files unless the daemon runs with
 * remote-keep false); that needs the daemon to run with --remote naming
 * the cluster, and until a partition is kept, the cluster to be up.
 * out->bytes is then the bytes of the file heads.
 * @param flags  0 or EC_PULL_LAZY (anything else: EC_EINVAL).
 * @return as ec_model_pull(); EC_EVERSION for a version published by an
 *         older embcache (publish it again to pull it lazily).
 */
EC_API int ec_model_pull_flags(ec_client *c, const char *model, const char *version,
                               const char *cluster_url, uint32_t flags,
                               ec_publish_result *out);

/**
 * Set a model's residency policy, applied to each of its versions:
 * eviction leaves at least min_resident_bytes of a version resident, and a
 * version whose request rate (partition reads by clients per second, over
 * the daemon's --rate-window) stays under min_request_rate is evicted down
 * to that minimum, least recently used version first. 0 and 0 (the
 * default) turn both off.
 * @return 0, or EC_EINVAL, EC_ENOENT (no such model), EC_ECONN.
 */
EC_API int ec_model_policy(ec_client *c, const char *model, uint64_t min_resident_bytes,
                           double min_request_rate);

/**
 * Set how embcached caches a model's tensor (tensor NULL or "": all of its
 * tensors), in every version, now and after restarts: EC_CACHE_ROWS,
 * EC_CACHE_PARTITIONS, or EC_CACHE_AUTO to let the daemon decide from the
 * tensor's size and the budget (the default). A tensor that changes mode
 * drops what the old mode held; clients gathering from it meanwhile go on
 * with the new mode without an error. A tensor that cannot be cached by
 * rows (a version-1 partition file, rows over 60 KiB) stays cached by
 * partitions, and the daemon logs why.
 * @return 0, or EC_EINVAL (a bad mode or name), EC_ENOENT (no such model),
 *         EC_ECONN.
 */
EC_API int ec_model_cache_mode(ec_client *c, const char *model, const char *tensor,
                               ec_cache_mode mode);

/**
 * Find the newest version of model trained at `round` whose params equal
 * params_json (compared as JSON: whitespace and key order do not matter;
 * NULL matches any params), as a model index lookup does.
 * @param[out] version_out  the version found
 * @return 0, or EC_EINVAL, EC_ENOENT (no such model or no version matches),
 *         EC_ECONN, EC_EPROTO.
 */
EC_API int ec_model_find(ec_client *c, const char *model, int64_t round,
                         const char *params_json, int64_t *version_out);

/**
 * List model versions (of one model, or of all when model is NULL) and
 * their tensors, in (model, version) order.
 * @return 0, the callback's non-zero value, or EC_ECONN, EC_EPROTO.
 */
EC_API int ec_catalog_list(ec_client *c, const char *model, ec_list_cb cb, void *arg);

/**
 * Read the daemon's statistics (name, value pairs: segment bytes, resident
 * partitions, hits, misses, page-ins, checksum failures, clients, ...).
 * The callback runs while the client's request lock is held: it must not
 * call into the same client.
 * @return 0, the callback's non-zero value, or EC_ECONN, EC_EPROTO.
 */
EC_API int ec_client_stats(ec_client *c, ec_stat_cb cb, void *arg);

/**
 * Read the daemon's statistics per tensor it has open: how each is cached,
 * how much of it is in memory, how many rows clients gathered and found
 * there, and how many bytes were read from its file. The callback runs
 * after the reply is read and may call into the same client.
 * @return 0, the callback's non-zero value, or EC_ECONN, EC_EPROTO.
 */
EC_API int ec_client_tensor_stats(ec_client *c, ec_tensor_stats_cb cb, void *arg);

#ifdef __cplusplus
}
#endif

/* Cached results and context windows. */
#include "embcache_results.h"
/* Exact top-k search over a tensor. */
#include "embcache_search.h"
#include "embcache_dynamic.h"

#endif /* EMBCACHE_H */
