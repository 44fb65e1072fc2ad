/*
 * hash.h - the 64-bit mix used to place keys in open-addressing tables
 * (the shared index and the daemon's private maps), on the CPU and, for
 * the shared index, on the GPU.
 */
#ifndef EC_COMMON_HASH_H
#define EC_COMMON_HASH_H

#include <stdint.h>

/* For nvcc too: the GPU's own index lookup (cuda/resolve.h) probes where
 * the daemon's index put each key. */
#ifdef __CUDACC__
#define EC_HASH_FN static inline __host__ __device__
#else
#define EC_HASH_FN static inline
#endif

/* murmur3's fmix64: full avalanche. Index keys differ mostly in their low
 * partition bits and high tensor bits; both must spread over the table. */
EC_HASH_FN uint64_t ec_mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

#endif
