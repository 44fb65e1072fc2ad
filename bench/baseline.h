/*
 * baseline.h - what embcache-bench compares embcache against, behind one
 * table of functions: the two in-process floors (a flat array, and an
 * open-addressing hash map, each with memcpy per row), Redis (MGET and a
 * pipelined GET variant, through hiredis) and memcached (multi-get, through
 * libmemcached). A scenario loads the same rows into every baseline and
 * times the same ids against each.
 *
 * Servers are started by the bench itself on loopback with persistence off,
 * and stopped by pid when the baseline is closed. A baseline whose program
 * or library is missing reports itself unavailable with a note, and the
 * scenario goes on without it. Used by bench/ only, single-threaded (one
 * instance per client process).
 */
#ifndef EC_BENCH_BASELINE_H
#define EC_BENCH_BASELINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ec_baseline ec_baseline;

typedef struct ec_baseline_ops {
    const char *name;        /* "flat", "hashmap", "redis-mget", "redis-pipeline", "memcached" */
    /* Start (a server, if any) and connect. Returns 0, or -1 with a one-line
     * note in note[] saying why it is unavailable (e.g. "redis-server not
     * installed: apt-get install redis-server"). */
    int (*open)(ec_baseline **out, char *note, size_t note_len);
    /* Store rows [0, rows) of row_bytes each, row r at data + r * row_bytes. */
    int (*load)(ec_baseline *b, const void *data, uint64_t rows, size_t row_bytes);
    /* Fetch rows ids[0..n) into out (n * row_bytes), in order. 0 or -1. */
    int (*gather)(ec_baseline *b, const int64_t *ids, size_t n, void *out);
    /* Disconnect, stop a server the baseline started, free. */
    void (*close)(ec_baseline *b);
} ec_baseline_ops;

/* Every baseline compiled in, NULL-terminated: the floors always, Redis
 * and memcached when their client libraries were found at build time. */
extern const ec_baseline_ops *const ec_baselines[];

#endif
