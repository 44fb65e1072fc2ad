/*
 * baselines.c - the table of baselines compiled into embcache-bench
 * (baseline.h): the floors always; Redis and memcached when
 * bench/baselines.cmake found their client libraries.
 */
#include <stddef.h>

#include "bench/baseline.h"

extern const ec_baseline_ops ec_baseline_flat_ops;
extern const ec_baseline_ops ec_baseline_hashmap_ops;
#ifdef EC_HAVE_REDIS
extern const ec_baseline_ops ec_baseline_redis_mget_ops;
extern const ec_baseline_ops ec_baseline_redis_pipeline_ops;
#endif
#ifdef EC_HAVE_MEMCACHED
extern const ec_baseline_ops ec_baseline_memcached_ops;
#endif

const ec_baseline_ops *const ec_baselines[] = {
    &ec_baseline_flat_ops,
    &ec_baseline_hashmap_ops,
#ifdef EC_HAVE_REDIS
    &ec_baseline_redis_mget_ops,
    &ec_baseline_redis_pipeline_ops,
#endif
#ifdef EC_HAVE_MEMCACHED
    &ec_baseline_memcached_ops,
#endif
    NULL,
};
