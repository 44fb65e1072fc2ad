/*
 * embcache_search.h - exact top-k search over a cached tensor, computed in
 * the calling process over its read-only mapping of the segment.
 * Included by embcache.h; do not include it alone.
 *
 * ec_search() scores every row of a 2-D [rows, dim] tensor (f32, f16 or
 * bf16) against each query and returns the k best rows per query, best
 * first. Nothing is copied out of shared memory for a resident partition
 * and the daemon is not asked for anything that is resident: the rows are
 * read where they are, partition by partition, and each partition's scores
 * are kept only if its index entry did not change while they were computed
 * (the seqlock of a gather); a partition that changed is scanned again.
 *
 * How a search reads a tensor, by how the daemon caches it:
 *  - by partitions: partitions not resident are faulted in first (in one
 *    request when the tensor takes at most half the segment; otherwise one
 *    by one as the scan reaches them, so a tensor larger than memory is
 *    streamed through it), then scanned in place;
 *  - by rows (tensors larger than their share of memory): a streamed scan.
 *    Every row is read through the gather path (ec_tensor_gather), in
 *    blocks of rows_per_partition rows, into a buffer of the calling
 *    thread: rows not in memory are read from the tensor's file as a
 *    gather would read them, and the item store keeps them as it keeps any
 *    gathered row. Such a search costs a read of the whole tensor.
 *
 * How it computes: on opts.threads threads, each over its own partitions
 * and into heaps of its own: for few queries a vectorized scan (each row
 * read once, scored against every query while it is in cache); from
 * EC_SEARCH_GEMM_MIN queries (and at least dim / 12) each block of rows is
 * packed and scored by a register-tiled kernel of the library's own, on the
 * same thread. No BLAS thread pool is involved: OPENBLAS_NUM_THREADS does
 * not matter to a search. The candidates found (k and a few more per
 * query) are then read once more and scored again in double precision, so
 * the scores returned do not depend on the kernel, and two rows with equal
 * scores come out in the order of their ids.
 *
 * Approximate search (IVF-Flat). ec_index_build() clusters a tensor's rows
 * (k-means, nlist lists) and stores the lists with the daemon, one index
 * per tensor of a version. ec_search() with opts.nprobe > 0 then scores
 * each query against the nlist centroids, scans only the rows of the
 * nprobe best lists (the same kernels: a vectorized scan for few queries
 * per list, the packed kernel for many), and scores its candidates again in
 * double precision against the rows as the tensor stores them, as an exact
 * search does: a row found has its exact score; a row in no probed list is
 * not found. The index is a file the daemon hands out read-only; the client
 * maps it once per tensor handle and checks its structure before use.
 *
 * A dynamic table (embcache_dynamic.h) has an index of its keys: built
 * from the rows it holds when the build begins (the table's lsn then is
 * the index's built_lsn). Rows written since (every slot records the lsn
 * of the update that wrote it) are the index's delta: an approximate
 * search assigns each of its rows to the nearest centroid of the build
 * (a handle assigns a row about once: after the table moves it reads the
 * slot headers and only the rows whose lsn moved), scores those in the probed
 * lists along with the lists' rows, and scores every candidate against its
 * key's row of now. So results never hold a deleted key nor a score of an
 * old row, and a key written since the build is found as a listed key is:
 * the index stays right and fast without a rebuild. Its centroids are the
 * build's; build it again when the rows have drifted from them
 * (ec_index_staleness_get says how many rows were written since).
 */
#ifndef EMBCACHE_SEARCH_H
#define EMBCACHE_SEARCH_H

#ifndef EMBCACHE_H
#error "include embcache.h"
#endif

#ifdef __cplusplus
extern "C" {
#endif

/** How a row is scored against a query. Values are stable (bindings use them). */
typedef enum ec_metric {
    EC_METRIC_IP = 1,      /**< inner product q.x; higher is better */
    EC_METRIC_COSINE = 2,  /**< q.x / (|q| |x|); higher is better; a row of
                            *   norm 0 scores 0 */
    EC_METRIC_L2 = 3,      /**< SQUARED Euclidean distance |q - x|^2; lower
                            *   is better */
} ec_metric;

/** From this many queries per call (or per list, approximate) on, and at
 *  least dim / 12, rows are packed and scored by the tiled kernel. */
#define EC_SEARCH_GEMM_MIN 16

/** Options of ec_search(). Zero-initialize, then set what you need;
 *  NULL is all zero. */
typedef struct ec_search_opts {
    uint32_t flags;        /**< none defined yet: must be 0 */
    uint32_t threads;      /**< threads of this call (all its work runs on
                            *   them): 0 is the CPUs this process may run
                            *   on, 1 the calling thread alone */
    uint32_t nprobe;       /**< 0: exact search. > 0: approximate, through the
                            *   tensor's IVF index (ec_index_build): the rows
                            *   of the nprobe lists whose centroids score
                            *   best for each query (more than the index's
                            *   lists: all of them); for a dynamic table,
                            *   and the rows written since the build */
} ec_search_opts;

/**
 * The k best rows of t for each of nq queries.
 *
 * @param[in]  t        a 2-D tensor [rows, dim] of dtype f32, f16 or bf16
 *                      (f16/bf16 rows are converted to f32 per block in
 *                      scratch memory of the thread that scores them)
 * @param[in]  queries  nq * dim floats, query after query; finite values
 * @param[in]  nq       number of queries, >= 1
 * @param[in]  dim      floats per query: must equal the tensor's shape[1]
 * @param[in]  k        results per query, >= 1. When k > rows, the results
 *                      past the last row have id -1 and score -INFINITY
 *                      (IP, cosine) or +INFINITY (L2), as FAISS does.
 * @param[in]  metric   EC_METRIC_IP, EC_METRIC_COSINE or EC_METRIC_L2
 * @param[in]  opts     NULL, or options (see ec_search_opts)
 * @param[out] scores   nq * k floats: query q's results at [q * k, q * k + k),
 *                      best first: highest IP or cosine, lowest squared L2.
 *                      Each score is computed in double precision from the
 *                      row as stored and rounded once to float.
 * @param[out] ids      nq * k row ids, in the order of scores. Rows with
 *                      equal scores come in the order of their ids (smaller
 *                      first); a row whose score is NaN ranks after every
 *                      row whose score is not.
 * @return 0, or EC_EINVAL (a NULL pointer, nq or k of 0, dim that is not the
 *         tensor's shape[1], a tensor that is not 2-D, a query value that
 *         is NaN or infinite, a cosine query of norm 0, unknown flags or
 *         metric: the message says which), EC_EDTYPE (a tensor that is not
 *         f32, f16 or bf16), EC_ENOMEM (nq * k results or the per-thread
 *         heaps do not fit in memory), and the errors of ec_tensor_gather():
 *         EC_ECHECKSUM, EC_EIO, EC_ENOSPC, EC_ECONN, EC_ESTALE, EC_EPROTO.
 *         With opts.nprobe > 0 also: EC_ENOENT (the tensor has no index:
 *         build one with ec_index_build or `embcache index build`), EC_EINVAL
 *         (the index was built for another metric: the message names it),
 *         EC_EFORMAT (the index file fails its structural check), EC_EIO
 *         (it cannot be mapped). Fewer than k rows in the probed lists: the
 *         results past them are id -1 with the score of a row past the
 *         table's end (above). A dynamic table: ids are keys; EC_EINVAL
 *         also for an index built before the tensor was made dynamic
 *         (build it again), EC_ESTALE when the table is dropped or rebuilt
 *         during the search.
 *         On failure scores and ids are unspecified.
 * Thread safety: any number of threads may search one tensor at once, and
 * gather from it meanwhile. A call starts its threads and joins them before
 * it returns. The first approximate search of a handle asks the daemon for
 * the index and maps it (under no lock: two threads may both map it, one
 * mapping is kept); the handle keeps that index until it is released, so an
 * index built again later is seen by handles resolved after it was stored.
 */
EC_API int ec_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                     ec_metric metric, const ec_search_opts *opts, float *scores,
                     int64_t *ids);

/** "ip", "cosine", "l2", or NULL for an unknown metric. */
EC_API const char *ec_metric_name(ec_metric metric);

/* ------------------------------------------------------------------ */
/* Approximate index (IVF-Flat)                                        */

/** Phases of ec_index_build(), as its progress callback names them. */
typedef enum ec_index_phase {
    EC_INDEX_SAMPLE = 1,   /**< reading the training sample; done/total rows */
    EC_INDEX_TRAIN = 2,    /**< k-means; done/total iterations */
    EC_INDEX_ASSIGN = 3,   /**< every row to its list; done/total rows */
    EC_INDEX_WRITE = 4,    /**< the lists into the file; done/total rows */
    EC_INDEX_SEND = 5,     /**< the daemon checks and stores it; 0/1, 1/1 */
} ec_index_phase;

/** Called by ec_index_build() on its own thread as it goes (at most about
 *  ten times a second, and at the end of each phase). Return 0 to go on,
 *  anything else to stop the build (it then fails with EC_EINVAL). */
typedef int (*ec_index_progress_fn)(ec_index_phase phase, uint64_t done, uint64_t total,
                                    void *arg);

/** Options of ec_index_build(). Zero-initialize, then set what you need;
 *  NULL is all zero. */
typedef struct ec_index_opts {
    uint32_t flags;        /**< none defined yet: must be 0 */
    ec_metric metric;      /**< what searches will use: EC_METRIC_IP (0 means
                            *   IP too), EC_METRIC_COSINE (rows and centroids
                            *   of unit length) or EC_METRIC_L2. Lists are made
                            *   by inner product with unit-length centroids
                            *   for IP and cosine (FAISS's IndexIVFFlat with
                            *   METRIC_INNER_PRODUCT), by L2 distance for L2 */
    uint32_t nlist;        /**< lists; 0: 4 sqrt(rows) rounded to a power of
                            *   two (4096 for 1M rows), at most rows */
    uint32_t iters;        /**< k-means iterations; 0: 10 */
    uint64_t train_rows;   /**< rows k-means trains on, drawn at random;
                            *   0: min(rows, 64 * nlist) */
    uint64_t seed;         /**< of the sample and the initial centroids;
                            *   0: a fixed default (builds are repeatable).
                            *   The matrix products of training and
                            *   assignment run on OpenBLAS's threads
                            *   (OPENBLAS_NUM_THREADS) */
    ec_index_progress_fn progress; /**< NULL: none */
    void *progress_arg;
} ec_index_opts;

/** What ec_index_build() did. */
typedef struct ec_index_build_stats {
    uint64_t rows, dim;
    uint32_t nlist, iters;
    uint64_t train_rows;
    uint64_t reseeded;     /**< empty clusters re-seeded during training */
    uint64_t min_list, max_list; /**< rows of the smallest and largest list */
    uint64_t file_bytes;   /**< of the index file */
    double train_s, assign_s, total_s; /**< seconds */
} ec_index_build_stats;

/**
 * Build an IVF-Flat index of a tensor of a version and store it with the
 * daemon (replacing the one it had). Reads every row of the tensor through
 * the gather path (twice: to assign and to write), trains k-means on a
 * random sample, writes the index file into an anonymous memory file and
 * sends it to the daemon, which checks it completely before it keeps it as
 * the index of that tensor; retiring the version removes it.
 *
 * A dynamic table: reads the table's lsn, then copies every live key and
 * its row out of shared memory once (each slot seq-checked; the build
 * works on that copy), and indexes those keys (the file records the lsn
 * and how many). Rows written meanwhile are in the index's delta (see the
 * top of this file). Building again replaces the index whole (the daemon
 * renames the new file over it): the way to empty the delta.
 *
 * @param[in]  c        a connected client of a uid the daemon lets
 *                      administer it (the request is an administrator's)
 * @param[in]  model    the model
 * @param[in]  version  a version number or an alias (resolved once: the
 *                      index belongs to the version it named then)
 * @param[in]  tensor   a 2-D [rows, dim] tensor of dtype f32, f16 or bf16
 * @param[in]  opts     NULL, or options (see ec_index_opts)
 * @param[out] st       NULL, or what the build did
 * @return 0, or EC_EINVAL (NULL or bad arguments or options, a tensor that
 *         is not 2-D, nlist above rows, the progress callback stopped it),
 *         EC_EDTYPE, EC_ENOENT (no such model, version or tensor), EC_ENOMEM
 *         (the sample, the centroids or the file do not fit), EC_EIO (the
 *         memory file), EC_EPERM (this uid may not administer the daemon),
 *         EC_EFORMAT (the daemon refused the file: a bug, or another writer),
 *         and the errors of ec_tensor_gather(). A dynamic table: EC_EINVAL
 *         also when it holds no key, EC_ESTALE when it was dropped or
 *         rebuilt during the copy (resolve and build again).
 * Memory: the training sample (train_rows * dim floats), one score block
 * (at most 64 MiB), the list of each row, and the index file itself (a
 * little more than rows * dim floats) in a memory file while it is sent;
 * for a dynamic table also the copy of its rows (keys * dim floats).
 * Thread safety: as any request; one build at a time per client is usual.
 */
EC_API int ec_index_build(ec_client *c, const char *model, const char *version,
                          const char *tensor, const ec_index_opts *opts,
                          ec_index_build_stats *st);

/** What the index of a tensor holds (ec_index_info_get). */
typedef struct ec_index_info {
    ec_metric metric;      /**< it was built for */
    uint32_t nlist;
    uint64_t rows, dim;
    uint64_t min_list, max_list;
    uint64_t file_bytes;
    uint64_t train_rows;
    uint32_t iters;
    uint64_t built_lsn;    /**< a dynamic table's: its lsn when the build
                            *   began (rows is then the keys indexed);
                            *   a tensor's: 0 */
} ec_index_info;

/**
 * Describe the index of tensor t, mapping it as the first approximate
 * search of t would.
 * @return 0, or EC_EINVAL (NULL), EC_ENOENT (no index), EC_EFORMAT,
 *         EC_EIO, EC_ENOMEM, EC_ECONN, EC_ESTALE. Thread-safe.
 */
EC_API int ec_index_info_get(ec_tensor *t, ec_index_info *out);

/** How far a dynamic table moved since its index was built
 *  (ec_index_staleness_get). */
typedef struct ec_index_staleness {
    uint64_t built_lsn;    /**< the table's lsn when the build began */
    uint64_t table_lsn;    /**< the table's lsn now */
    uint64_t indexed_keys; /**< keys the index holds */
    uint64_t live_keys;    /**< keys the table holds now */
    uint64_t stale_rows;   /**< live keys written since the build (their slot's
                            *   lsn is above built_lsn): searches assign each
                            *   to its nearest centroid of the build (once per
                            *   handle) and score it when its list is probed;
                            *   build the index again (ec_index_build) when
                            *   they are a large share of live_keys and the
                            *   rows drifted from the build's centroids. At
                            *   most live_keys */
} ec_index_staleness;

/**
 * How stale the index of dynamic table t is, as the shared segment says now:
 * reads the header of every slot of the table (no row), and maps the index
 * as ec_index_info_get() does (a handle keeps the index it mapped first:
 * after a rebuild, resolve the tensor again to see the new one).
 * An index of a dynamic table stays right as rows change: searches assign
 * the rows written since the build to the build's lists (a handle assigns
 * each written row once), score every candidate by its key's row now, and
 * never return a deleted key. Its centroids are the build's: rebuild when
 * the rows drifted from them.
 * @return 0, or EC_EINVAL (NULL, not a dynamic table, or an index built
 *         before the tensor was made dynamic: build it again), EC_ENOENT
 *         (no index), EC_ESTALE (the table was dropped or rebuilt: resolve
 *         again), and the errors of ec_index_info_get(). Thread-safe.
 */
EC_API int ec_index_staleness_get(ec_tensor *t, ec_index_staleness *out);

#ifdef __cplusplus
}
#endif

#endif /* EMBCACHE_SEARCH_H */
