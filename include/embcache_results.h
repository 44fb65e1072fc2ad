/*
 * embcache_results.h - the cache manager's public C API: inference results
 * and context windows cached by (namespace, key), computed once.
 * Included by embcache.h; do not include it alone.
 *
 * A namespace holds results: key bytes (up to 4 KiB) -> a value (bytes, or
 * a tensor with dtype and shape, up to about 1 MiB with its key), each with
 * a TTL spread by jitter. A hit is read straight from shared memory: no
 * system call, no daemon round trip, checked against the daemon's concurrent
 * writes like a row. Writes go through the daemon.
 *
 * The four ways a cache fails, and what a namespace does against each:
 *  - breakdown (many misses of one hot key at once):
 *    ec_results_get_or_compute() gives the first caller a lease; every other
 *    caller, in any process, waits for that result or (EC_RES_ALLOW_STALE)
 *    gets the stale value meanwhile. A lease whose holder dies, or that is
 *    held past the namespace's lease time, passes to a waiter. A hot key is
 *    recomputed shortly before it expires by one caller (probabilistic early
 *    expiration, "XFetch": the later and the slower to compute, the likelier).
 *  - penetration (keys without an answer): a computation may answer "no
 *    result" (EC_RES_NEGATIVE); that answer is cached for the namespace's
 *    negative TTL, at most negative_max of them (the oldest go first), so a
 *    flood of such keys neither reaches the backend more than once per key
 *    per negative TTL nor evicts real results.
 *  - avalanche (many keys expire at once, or a cold start): TTL jitter, at
 *    most max_computing leases at once per namespace (others wait, or get
 *    the stale value), and results that survive a daemon restart.
 *  - invalidation: a namespace bound to a model version or alias
 *    ("bert", "current") starts a new generation when the alias moves or the
 *    version is retired: the old generation's results are never served again
 *    and are dropped at once. ec_results_purge() drops one key or all.
 *
 * Isolation: a namespace belongs to the uid that created it. Unless it was
 * created EC_NS_SHARED, its results are kept in memory only that uid maps,
 * and other uids can neither open, read, write nor purge it. A shared
 * namespace may be read and written by every client the daemon serves;
 * configuring, purging all of it and dropping it stay with its owner and
 * the daemon's administrators.
 *
 * Across hosts (EC_NS_REMOTE): a miss of a remote namespace, after the
 * local single flight, asks the cluster: a value another host stored there
 * is copied here and read as a hit; else one host in the cluster wins the
 * key's lease (SET NX PX, for the namespace's lease time) and computes, and
 * the others wait as for a local computation and read the value when it
 * lands. Hosts share a namespace by name and binding (model and the
 * version number it leads to); each keeps its own settings. While the
 * cluster cannot be reached, local hits go on and misses are computed here.
 *
 * Threads: an ec_results handle may be used by many threads at once.
 */
#ifndef EMBCACHE_RESULTS_H
#define EMBCACHE_RESULTS_H

#ifndef EMBCACHE_H
#error "include embcache.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ec_results ec_results;

/** Longest namespace name, in bytes (letters, digits, '.', '_', '-', ':'). */
#define EC_NS_NAME_MAX 63
/** Longest key, in bytes. */
#define EC_RES_KEY_MAX 4096u
/** Most namespaces a daemon keeps. */
#define EC_NS_MAX 384u

/* ec_ns_opts.flags */
#define EC_NS_CREATE    0x1u /**< create the namespace when it does not exist */
#define EC_NS_SHARED    0x2u /**< created open to every uid the daemon serves */
#define EC_NS_CONFIGURE 0x4u /**< apply these options to an existing namespace
                              *   (its owner or an administrator); every option
                              *   is set, 0 to its default, and a NULL
                              *   bind_model unbinds it */
#define EC_NS_EXCL      0x8u /**< with EC_NS_CREATE: EC_EEXIST when it exists */
#define EC_NS_REMOTE    0x10u /**< created shared across hosts: the daemon (started
                              *   with --remote) keeps its results in the remote
                              *   tier's cluster too and takes its leases there, so
                              *   a key missed on several hosts at once is computed
                              *   once. Chosen at creation; without --remote,
                              *   creating or opening one is EC_EINVAL. Opening an
                              *   existing namespace that is not remote with it is
                              *   EC_EINVAL too (drop and create it again). */

/** How a namespace behaves. Zero-initialize: every 0 is the stated default. */
typedef struct ec_ns_opts {
    uint32_t flags;               /**< EC_NS_* */
    const char *bind_model;       /**< NULL: bound to no model */
    const char *bind_version;     /**< with bind_model (both or neither, else EC_EINVAL):
                                   *   a version number or an alias */
    double ttl;                   /**< seconds a result is fresh; 0: 300 */
    double stale_ttl;             /**< seconds past that it may be served stale;
                                   *   0: 60; < 0: never */
    double negative_ttl;          /**< seconds a "no result" is kept; 0: 30 */
    double jitter;                /**< each TTL is spread by +- this fraction; 0: 0.1;
                                   *   < 0: none */
    double lease_time;            /**< seconds a computation may take before its
                                   *   lease passes to a waiter; 0: 30 */
    uint32_t max_computing;       /**< leases held at once in the namespace; 0: 64 */
    uint64_t negative_max;        /**< most "no result" entries kept; 0: 65536 */
} ec_ns_opts;

/**
 * Open namespace `name` (creating or configuring it as opts->flags say;
 * opts may be NULL: open an existing one). Options other than the flags
 * only count when the namespace is created or configured.
 * @return 0, or EC_ENOENT (no such namespace and no EC_NS_CREATE),
 *   EC_EEXIST (it exists and EC_NS_CREATE | EC_NS_EXCL was asked),
 *   EC_EPERM (another uid's, or configuring what the caller does not own),
 *   EC_ENOENT for a binding to an unknown model or alias, EC_EINVAL (a bad
 *   name or option), EC_ENOSPC (EC_NS_MAX namespaces exist), EC_ECONN.
 */
EC_API int ec_results_open(ec_client *c, const char *name, const ec_ns_opts *opts,
                           ec_results **out);
/** Release the handle (the namespace and its results stay). */
EC_API void ec_results_close(ec_results *r);

/* ec_result_meta.flags and ec_result_value.flags */
#define EC_RES_NEGATIVE 0x1u /**< "no result" was the answer: no value bytes */
#define EC_RES_TENSOR   0x2u /**< the value is a tensor: dtype, ndim, shape */

/* ec_result_meta.state */
#define EC_RES_FRESH 1       /**< within its TTL */
#define EC_RES_STALE 2       /**< past its TTL, within its stale time */

/** What a read found. */
typedef struct ec_result_meta {
    int state;                    /**< EC_RES_FRESH or EC_RES_STALE */
    uint32_t flags;               /**< EC_RES_NEGATIVE, EC_RES_TENSOR */
    size_t len;                   /**< value bytes (also when they did not fit) */
    ec_dtype dtype;               /**< EC_RES_TENSOR */
    uint32_t ndim;
    int64_t shape[EC_MAX_DIMS];
    double ttl_left;              /**< seconds it stays fresh (< 0: stale for that long) */
    uint32_t compute_us;          /**< how long computing it took, as its writer said */
} ec_result_meta;

/* Flags of reads */
#define EC_RES_ALLOW_STALE 0x1u /**< a stale value is an answer */
#define EC_RES_NO_EARLY    0x2u /**< get_or_compute: never refresh a fresh value early */

/**
 * Look key up and copy its value into out (cap bytes). No system call.
 * out may be NULL (cap 0): then only *meta is filled.
 * @return 1 found (fresh; or stale with EC_RES_ALLOW_STALE; a cached
 *   "no result" is found with meta->flags EC_RES_NEGATIVE and len 0),
 *   0 not found, EC_ETOOBIG (meta->len says how many bytes it needs),
 *   EC_EINVAL, EC_ESTALE (the daemon restarted: reconnect).
 */
EC_API int ec_results_get(ec_results *r, const void *key, size_t key_len, uint32_t flags,
                          void *out, size_t cap, ec_result_meta *meta);

/** A value to store. Zero-initialize. */
typedef struct ec_result_value {
    const void *data;             /**< the value bytes (ignored for EC_RES_NEGATIVE) */
    size_t len;
    uint32_t flags;               /**< EC_RES_NEGATIVE, EC_RES_TENSOR */
    ec_dtype dtype;               /**< EC_RES_TENSOR: len must be the shape's bytes */
    uint32_t ndim;
    int64_t shape[EC_MAX_DIMS];
    double ttl;                   /**< seconds; 0: the namespace's (negative TTL for
                                   *   EC_RES_NEGATIVE), jittered */
    uint32_t compute_us;          /**< how long computing it took (early refresh);
                                   *   0: unknown */
} ec_result_value;

/**
 * Store key -> value (replacing what is there). Ends the caller's lease on
 * key, if it holds one, and wakes the processes waiting for it.
 * @return 0, or EC_EINVAL, EC_ETOOBIG (key and value exceed an item),
 *   EC_ENOSPC (no memory could be freed for it), EC_EPERM, EC_ECONN.
 */
EC_API int ec_results_put(ec_results *r, const void *key, size_t key_len,
                          const ec_result_value *v);

/**
 * Computes key's value into *out; runs in the calling thread. out->data must
 * stay valid until the call that invoked fn returns. A non-zero return is a
 * failure: the lease is given up (a waiter gets it) and that value returned.
 */
typedef int (*ec_compute_fn)(void *arg, const void *key, size_t key_len, ec_result_value *out);

/** Options of ec_results_get_or_compute(). Zero-initialize. */
typedef struct ec_compute_opts {
    uint32_t flags;               /**< EC_RES_ALLOW_STALE, EC_RES_NO_EARLY */
    double wait;                  /**< seconds to wait for another caller's computation
                                   *   (and its successors); 0: 60 */
    double beta;                  /**< early refresh eagerness (XFetch); 0: 1.0 */
} ec_compute_opts;

/**
 * Read key, or compute it once for everyone: on a miss the caller either
 * gets the lease and runs fn (then stores its value), or waits for the
 * process that has the lease (in any process; with EC_RES_ALLOW_STALE a
 * stale value is returned instead of waiting). A fresh value close to its
 * expiry may be recomputed early by one caller, which then returns the new
 * value; when that early recomputation fails, the still fresh value is
 * returned. The value (cached or computed) is copied into out as by
 * ec_results_get. A lease is per key: while one caller holds it, every other
 * caller waits, other threads of the same process included.
 * @return 1 (the value is in out and *meta), EC_ETOOBIG (it was found or
 *   stored, but needs meta->len bytes: read it with ec_results_get),
 *   EC_ETIMEOUT (waited opts->wait for others' computations), fn's value,
 *   or an error of ec_results_put.
 */
EC_API int ec_results_get_or_compute(ec_results *r, const void *key, size_t key_len,
                                     const ec_compute_opts *opts, ec_compute_fn fn, void *arg,
                                     void *out, size_t cap, ec_result_meta *meta);

/* ec_results_lease() answers */
#define EC_LEASE_GRANTED 1  /**< compute it, then ec_results_put (or _release) */
#define EC_LEASE_WAIT    2  /**< another caller computes it: ec_results_wait */
#define EC_LEASE_FOUND   3  /**< it is in the cache now: read it */
#define EC_LEASE_STALE   4  /**< another computes it; its stale value may be read */

/**
 * The miss path in parts, for callers that compute asynchronously: ask for
 * key's lease (flags: EC_RES_ALLOW_STALE; EC_RES_EARLY asks to refresh a
 * fresh value, granted to one caller only).
 * @return an EC_LEASE_* answer, or EC_EINVAL, EC_EPERM, EC_ECONN.
 */
#define EC_RES_EARLY 0x4u
EC_API int ec_results_lease(ec_results *r, const void *key, size_t key_len, uint32_t flags);
/** Give up the caller's lease on key without a value (a waiter gets it). */
EC_API int ec_results_release(ec_results *r, const void *key, size_t key_len);
/**
 * Sleep until something is stored in or released from the namespace, or
 * timeout seconds pass (no system call but the wait itself).
 * @return 0 (woken), EC_ETIMEOUT.
 */
EC_API int ec_results_wait(ec_results *r, double timeout);

/**
 * Drop key's value (key NULL: every result of the namespace; its owner or
 * an administrator). *removed (may be NULL) says how many went.
 * @return 0, or EC_EPERM, EC_ECONN.
 */
EC_API int ec_results_purge(ec_results *r, const void *key, size_t key_len, uint64_t *removed);

/**
 * Delete namespace `name` and its results (its owner or an administrator).
 * @return 0, or EC_ENOENT, EC_EPERM, EC_ECONN.
 */
EC_API int ec_results_drop(ec_client *c, const char *name);

/** A namespace, as ec_results_list() reports it. Valid during the callback. */
typedef struct ec_ns_info {
    const char *name;
    uint32_t owner_uid;
    uint32_t flags;               /**< EC_NS_SHARED, EC_NS_REMOTE */
    const char *bind_model;       /**< "" when unbound */
    const char *bind_version;
    int64_t bound_version;        /**< the version the binding leads to now; 0 unbound */
    uint32_t generation;          /**< bumped by each invalidation */
    /** Seconds, as in ec_ns_opts, but every default filled in; jitter and
     *  stale_ttl 0 (jitter) or -1 (stale_ttl) mean none. */
    double ttl, stale_ttl, negative_ttl, jitter, lease_time;
    uint32_t max_computing;
    uint64_t negative_max;
    uint64_t items, negative_items, bytes;  /**< stored now (items include the
                                   *   negative ones) */
    uint64_t hits, misses, negative_hits, stale_served; /**< clients' counts; hits
                                   *   exclude negative hits and stale reads */
    uint64_t leases_granted, leases_waited, leases_passed, early_refreshes;
    uint64_t computing, computing_peak, limited; /**< leases now, most at once, refused for the limit */
    uint64_t puts, negative_puts, evictions, purged, invalidations; /**< puts include
                                   *   negative puts */
} ec_ns_info;

typedef int (*ec_ns_cb)(const ec_ns_info *ns, void *arg);

/** List the namespaces the caller may open (an administrator: all).
 * @return 0, the callback's non-zero value, or EC_ECONN, EC_EPROTO. */
EC_API int ec_results_list(ec_client *c, ec_ns_cb cb, void *arg);

/* ------------------------------------------------------------------ */
/* Context windows                                                     */

/*
 * A token sequence is cached as a chain of blocks of block_tokens tokens:
 * block i is the result whose key is (the 16-byte chain hash of blocks
 * 0..i-1, the tokens of block i), as vLLM's and LMCache's prefix caches key
 * theirs; the chain hash is XXH3-128 seeded with the namespace's salt, so the
 * same tokens in two namespaces are two different chains. A block's value is
 * whatever the caller keeps per block (a KV-cache chunk as a tensor).
 * Only whole blocks are cached.
 */

/**
 * How many leading blocks of tokens[0..n) are cached, in one call: no
 * system call. A block within its stale time counts (the value of a
 * prefix does not change). *blocks is written.
 * @return 0, or EC_EINVAL, EC_ESTALE.
 */
EC_API int ec_context_lookup_prefix(ec_results *r, const int32_t *tokens, size_t n,
                                    size_t block_tokens, size_t *blocks);

/**
 * Store blocks first..first+count-1 of tokens (each must lie within n):
 * values[i] is block first+i's value.
 * @return 0, or an error of ec_results_put.
 */
EC_API int ec_context_put(ec_results *r, const int32_t *tokens, size_t n, size_t block_tokens,
                          size_t first, size_t count, const ec_result_value *values);

/**
 * Copy the values of blocks 0..count-1, each of block_bytes, into out
 * (count * block_bytes bytes): host memory when device < 0, else memory of
 * CUDA device `device` (through the GPU backend; EC_EDEVICE without one).
 * @return 0, EC_ENOENT (a block is not cached: *got, when not NULL, says how
 *   many were copied), EC_ERANGE (a block's value is not block_bytes long),
 *   EC_EINVAL.
 */
EC_API int ec_context_gather(ec_results *r, const int32_t *tokens, size_t n, size_t block_tokens,
                             size_t count, void *out, size_t block_bytes, int device,
                             size_t *got);

#ifdef __cplusplus
}
#endif
#endif /* EMBCACHE_RESULTS_H */
