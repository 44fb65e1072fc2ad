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
 * How it computes: for up to EC_SEARCH_GEMM_MIN - 1 queries a vectorized
 * scan (each row read once, scored against every query while it is in
 * cache) on opts.threads threads, each over its own partitions; for more,
 * a matrix product per partition (OpenBLAS cblas_sgemm, on OpenBLAS's own
 * threads: OPENBLAS_NUM_THREADS or openblas_set_num_threads()) and per-query
 * heaps updated by opts.threads threads. The candidates found (k and a few
 * more per query) are then read once more and scored again in double
 * precision, so the scores returned do not depend on the path, and two rows
 * with equal scores come out in the order of their ids.
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

/** From this many queries per call on, matrix products (BLAS) score them. */
#define EC_SEARCH_GEMM_MIN 16

/** Options of ec_search(). Zero-initialize, then set what you need;
 *  NULL is all zero. */
typedef struct ec_search_opts {
    uint32_t flags;        /**< none defined yet: must be 0 */
    uint32_t threads;      /**< threads of this call's own work (the scan of
                            *   a few queries, the heaps of many): 0 is the
                            *   CPUs this process may run on, 1 the calling
                            *   thread alone */
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
 *         On failure scores and ids are unspecified.
 * Thread safety: any number of threads may search one tensor at once, and
 * gather from it meanwhile. A call starts its threads and joins them before
 * it returns.
 */
EC_API int ec_search(ec_tensor *t, const float *queries, size_t nq, size_t dim, size_t k,
                     ec_metric metric, const ec_search_opts *opts, float *scores,
                     int64_t *ids);

/** "ip", "cosine", "l2", or NULL for an unknown metric. */
EC_API const char *ec_metric_name(ec_metric metric);

#ifdef __cplusplus
}
#endif

#endif /* EMBCACHE_SEARCH_H */
