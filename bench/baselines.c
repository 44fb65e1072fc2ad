/*
 * baselines.c - the table of baselines compiled into embcache-bench
 * (baseline.h): the floors, the mmap baselines and our own memcached
 * clients always; Redis and libmemcached when bench/baselines.cmake found
 * their client libraries.
 */
#include <stddef.h>

#include "bench/baseline.h"

extern const ec_baseline_ops ec_baseline_flat_ops;
extern const ec_baseline_ops ec_baseline_hashmap_ops;
extern const ec_baseline_ops ec_baseline_mmap_ops;
extern const ec_baseline_ops ec_baseline_mmap_random_ops;
extern const ec_baseline_ops ec_baseline_memcached_get_ops;
extern const ec_baseline_ops ec_baseline_memcached_meta_ops;
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
    &ec_baseline_mmap_ops,
    &ec_baseline_mmap_random_ops,
#ifdef EC_HAVE_REDIS
    &ec_baseline_redis_mget_ops,
    &ec_baseline_redis_pipeline_ops,
#endif
#ifdef EC_HAVE_MEMCACHED
    &ec_baseline_memcached_ops,
#endif
    &ec_baseline_memcached_get_ops,
    &ec_baseline_memcached_meta_ops,
    NULL,
};

const char *const ec_baseline_names[] = {
    "flat", "hashmap", "mmap", "mmap-random", "redis-mget", "redis-pipeline", "memcached",
    "memcached-get", "memcached-meta", NULL,
};
