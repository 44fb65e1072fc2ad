/*
 * hist.h - a latency histogram with fixed bucket bounds, for the daemon's
 * Prometheus histograms (core/metrics.c renders them as
 * embcache_<name>_seconds_bucket / _sum / _count).
 *
 * What it owns: nothing but the counters inside an ec_hist. Who calls it:
 * the daemon's server thread records (the pager's completions, fault
 * replies, result puts) and renders, so no field is atomic: one thread
 * writes and reads an ec_hist.
 *
 * Buckets: le = 2^k microseconds for k = 0 .. EC_HIST_BUCKETS - 1 (1 us to
 * about 16.8 s), then +Inf (the count). Cumulative at rendering, as the
 * exposition format wants; stored per bucket here.
 */
#ifndef EC_COMMON_HIST_H
#define EC_COMMON_HIST_H

#include <stdint.h>
#include <time.h>

#define EC_HIST_BUCKETS 25 /* le 1 us, 2 us, ..., 2^24 us */

typedef struct ec_hist {
    uint64_t bucket[EC_HIST_BUCKETS]; /* observations in (2^(k-1), 2^k] us */
    uint64_t count;                   /* all observations (+Inf) */
    uint64_t sum_ns;
} ec_hist;

static inline uint64_t ec_hist_now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Record one duration of ns nanoseconds. */
static inline void ec_hist_add(ec_hist *h, uint64_t ns)
{
    uint64_t us = (ns + 999) / 1000;
    unsigned k = 0;

    while (k < EC_HIST_BUCKETS && (1ull << k) < us)
        k++;
    if (k < EC_HIST_BUCKETS)
        h->bucket[k]++;
    h->count++;
    h->sum_ns += ns;
}

/* Record the time since start_ns (an ec_hist_now_ns() value; 0: none). */
static inline void ec_hist_since(ec_hist *h, uint64_t start_ns)
{
    uint64_t now = ec_hist_now_ns();

    if (start_ns && now >= start_ns)
        ec_hist_add(h, now - start_ns);
}

/* The upper bound of bucket k, in seconds. */
static inline double ec_hist_le_seconds(unsigned k)
{
    return (double)(1ull << k) / 1e6;
}

#endif
