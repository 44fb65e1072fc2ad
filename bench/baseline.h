/*
 * baseline.h - what embcache-bench compares embcache against, behind one
 * table of functions:
 *
 *   flat, hashmap    the in-process floors: a flat array, and an
 *                    open-addressing hash map, each with memcpy per row;
 *   mmap, mmap-random
 *                    a read-only MAP_SHARED mapping of the table's .npy file
 *                    through the page cache (what np.load(mmap_mode='r') and
 *                    safetensors do), memcpy per row; mmap-random also
 *                    madvise(MADV_RANDOM)s the mapping (no readahead);
 *   redis-mget, redis-pipeline
 *                    Redis through hiredis: one MGET, or n pipelined GETs;
 *   memcached        libmemcached's multi-get (binary protocol);
 *   memcached-get    our own client: one ASCII "get k1 ... kn";
 *   memcached-meta   our own client: pipelined meta "mg <key> v" and "mn".
 *
 * A scenario loads the same rows into every baseline (or, for the mmap
 * baselines, maps the same file) and times the same ids against each.
 * Servers are started by the bench itself, on a Unix socket in a private
 * directory by default (ec_bl_set_transport() in baseline_server.h picks TCP
 * loopback instead), with persistence off, and stopped by pid when the
 * baseline is closed. A baseline whose program or library is missing
 * reports itself unavailable with a note, and the scenario goes on without
 * it. Used by bench/ only, single-threaded (one instance per client
 * process).
 */
#ifndef EC_BENCH_BASELINE_H
#define EC_BENCH_BASELINE_H

#include <stddef.h>
#include <stdint.h>

typedef struct ec_baseline ec_baseline;

typedef struct ec_baseline_ops {
    const char *name; /* "flat", "hashmap", "mmap", "redis-mget", ... */
    /* Start (a server, if any) and connect. Returns 0, or -1 with a one-line
     * note in note[] saying why it is unavailable (e.g. "redis-server not
     * installed: apt-get install redis-server"). */
    int (*open)(ec_baseline **out, char *note, size_t note_len);
    /* Store rows [0, rows) of row_bytes each, row r at data + r * row_bytes.
     * NULL for the baselines that map a file instead (load_file). */
    int (*load)(ec_baseline *b, const void *data, uint64_t rows, size_t row_bytes);
    /* Fetch rows ids[0..n) into out (n * row_bytes), in order. 0 or -1. */
    int (*gather)(ec_baseline *b, const int64_t *ids, size_t n, void *out);
    /* Disconnect, stop a server the baseline started, free. */
    void (*close)(ec_baseline *b);
    /* Optional: serve rows [0, rows) from the file at path, row r at byte
     * data_off + r * row_bytes (a .npy's data). Nothing is read yet. */
    int (*load_file)(ec_baseline *b, const char *path, uint64_t data_off, uint64_t rows,
                     size_t row_bytes);
    /* Optional: make every row resident before timing (the mmap floors
     * touch every page). 0 or -1. */
    int (*prefault)(ec_baseline *b);
    /* Optional: how the rows are reached, for the result's note
     * ("transport=unix:/tmp/.../server.sock"). */
    void (*describe)(ec_baseline *b, char *buf, size_t len);
} ec_baseline_ops;

/* Every baseline compiled in, NULL-terminated: the floors, the mmap
 * baselines and our own memcached clients always; Redis and libmemcached
 * when their client libraries were found at build time. */
extern const ec_baseline_ops *const ec_baselines[];

/* Every baseline name the bench knows, compiled in or not, NULL-terminated
 * (to tell "unknown" from "not compiled in"). */
extern const char *const ec_baseline_names[];

#endif
