/*
 * scenario_gpu.h - embcache-bench's `gpu` scenario (scenario_gpu.c): rows
 * gathered into GPU memory, from the device tier and from mapped host
 * memory, next to the PCIe limit and to PyTorch.
 *
 * scenario_gpu.c is compiled only into a CUDA build of embcache-bench. The
 * harness (embcache-bench.c) declares its two entry points weak, as it does
 * the server baselines: without CUDA they are NULL and the scenario reports
 * itself skipped. The harness owns the daemon process and the result list;
 * the scenario reaches them through the callbacks of bench_gpu_env. Runs on
 * the harness's main thread.
 */
#ifndef EC_BENCH_SCENARIO_GPU_H
#define EC_BENCH_SCENARIO_GPU_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "bench/bench_util.h"

/* One result, as the harness records it. */
typedef struct bench_gpu_result {
    char system[24];     /* embcache-dev, embcache-dev-f16, embcache-mapped,
                          * h2d-pinned, h2d-pageable, torch-host, torch-device */
    const char *dtype;   /* the table's dtype name; NULL where there is no table */
    uint64_t dim, rows, row_bytes; /* the table: width, rows, bytes of a row */
    uint64_t batch;      /* rows per call (1 for the H2D copies) */
    double secs;
    uint64_t calls, rows_done, verified, mismatches;
    double p50_us, p90_us, p99_us, p999_us, max_us; /* -1: not measured */
    double rows_s, gbps; /* GB/s of source rows (or of the copies) */
    bu_hist *h;          /* the latencies, or NULL; emit() takes ownership */
    bool ok;
    char note[400];
} bench_gpu_result;

typedef struct bench_gpu_env {
    const char *tmp;            /* a directory of the run, removed at exit */
    const uint64_t *batch;      /* batch sizes */
    unsigned nbatch;
    const uint64_t *dims;       /* row widths, in elements */
    unsigned ndims;
    const char *const *dtypes;  /* table dtypes: "f32", "f16" */
    unsigned ndtypes;
    uint64_t table_mib;         /* bytes of each table, in MiB */
    double seconds;             /* per configuration */
    int device;                 /* the CUDA device ordinal */
    uint64_t seed;
    const char *python;         /* interpreter for the PyTorch baseline */
    const char *torch_script;   /* gpu_torch_baseline.py, or NULL: no (c)/(d) */
    FILE *out;                  /* where result lines and the table go */
    volatile sig_atomic_t *stop; /* set on Ctrl-C */

    /* Stop the harness's daemon, whatever it is, and start embcached on
     * data_dir and sock with a segment of shm_bytes and --gpu-slab
     * gpu_slab. 0, or -1 with the reason on stderr. */
    int (*daemon_start)(void *h, const char *data_dir, const char *sock, uint64_t shm_bytes,
                        uint64_t gpu_slab);
    void (*daemon_stop)(void *h);
    /* Record and print one result. */
    void (*emit)(void *h, bench_gpu_result *r);
    /* A line for the notes at the end of the run. */
    void (*note)(void *h, const char *msg);
    void *h;
} bench_gpu_env;

/* Whether the scenario can run here (CUDA driver, a GPU numbered device,
 * EMBCACHE_BACKEND not forcing another backend): 0, or -1 with why. */
int bench_gpu_probe(int device, char *why, size_t len) __attribute__((weak));

/* Run the scenario: 0 when every configuration ran and every row read back
 * matched; -1 otherwise (the notes and the result lines say what failed). */
int bench_gpu_run(const bench_gpu_env *env) __attribute__((weak));

#endif
