/*
 * bench_util.h - pieces shared by the benchmark programs: an HDR-style
 * log-linear latency histogram, a monotonic clock, a Zipf(s) id sampler, a
 * progress bar (stderr, only on a tty) and the small helpers for running a
 * child program and reading its JSON.
 */
#ifndef EC_BENCH_UTIL_H
#define EC_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/units.h"
#include <stdio.h>
#include <sys/types.h>

/* ---- time ---- */
uint64_t bu_now_ns(void);

/* ---- histogram --------------------------------------------------------
 * Values in nanoseconds. Values below 2^BU_SUB_BITS are exact; above, each
 * power of two is split into 2^BU_SUB_BITS linear buckets (relative error
 * under 1/64 = 1.6%), up to 2^40 ns (18 minutes). Fixed size, so it can
 * live in shared memory and be merged across processes. */
#define BU_SUB_BITS 6
#define BU_SUB (1u << BU_SUB_BITS)
#define BU_MAX_EXP 40
#define BU_BUCKETS ((BU_MAX_EXP - BU_SUB_BITS + 2) * BU_SUB)

typedef struct bu_hist {
    uint64_t count;
    uint64_t max;
    uint64_t min;
    double sum;
    uint64_t b[BU_BUCKETS];
} bu_hist;

void bu_hist_reset(bu_hist *h);
void bu_hist_add(bu_hist *h, uint64_t ns);
void bu_hist_merge(bu_hist *into, const bu_hist *from);
/* The value at quantile q in [0, 1] (the bucket's midpoint; max for q = 1). */
uint64_t bu_hist_quantile(const bu_hist *h, double q);
/* Visit each non-empty bucket in order: (upper value ns, cumulative fraction). */
void bu_hist_cdf(const bu_hist *h, void (*cb)(double ns, double frac, void *arg), void *arg);

/* ---- Zipf --------------------------------------------------------------
 * Ranks 0..n-1 drawn with P(k) ~ 1/(k+1)^s (s > 0; s = 0 means uniform),
 * mapped through a fixed pseudo-random permutation of the ids so the hot
 * rows are spread over the table rather than packed in its first
 * partitions. Deterministic for a seed. */
typedef struct bu_zipf bu_zipf;
bu_zipf *bu_zipf_new(uint64_t n, double s, uint64_t seed);
uint64_t bu_zipf_next(bu_zipf *z);
void bu_zipf_free(bu_zipf *z);

uint64_t bu_splitmix(uint64_t *state);

/* ---- progress bar -------------------------------------------------------
 * One line on stderr, redrawn at most 10 times a second; nothing unless
 * stderr is a terminal. */
typedef struct bu_progress {
    const char *what;
    double total;
    uint64_t last_ns;
    bool on;
} bu_progress;
void bu_progress_start(bu_progress *p, const char *what, double total);
void bu_progress_update(bu_progress *p, double done);
void bu_progress_end(bu_progress *p);

/* ---- child programs and JSON ---- */
/* Run argv (PATH searched), return its stdout (malloc'd) and wait status. */
char *bu_run_capture(char *const argv[], int *status);
/* In [from, to): the number after "key": ; false if absent. */
bool bu_json_num(const char *from, const char *to, const char *key, double *out);
/* In [from, to): the object after "key": { and its end. */
bool bu_json_obj(const char *from, const char *to, const char *key, const char **ofrom,
                 const char **oto);
/* Write s as a JSON string. */
void bu_json_str(FILE *out, const char *s);

/* ---- files and processes ---- */
/* Drop path's clean, unmapped pages from the page cache
 * (POSIX_FADV_DONTNEED over the whole file). 0, or -errno. */
int bu_file_drop_cache(const char *path);
/* Bytes of path resident in the page cache (mincore over a fresh read-only
 * mapping, which faults nothing in); -1 on error. */
int64_t bu_file_resident(const char *path);
/* A field of /proc/<pid>/status given in kB ("RssAnon", "VmRSS",
 * "RssShmem"), in bytes; -1 when unreadable. */
int64_t bu_proc_status_bytes(pid_t pid, const char *field);
/* CPU seconds (user + system, all threads) an embcached's worker has used:
 * its pid is in DATA_DIR/embcached.lock. -1 when either cannot be read. */
double bu_daemon_cpu_seconds(const char *data_dir);

/* ---- fio, the device's limit ---- */
typedef struct bu_fio_res {
    bool ok;
    double gbps, p50_us, p99_us; /* p50/p99 of submit-to-complete latency */
    double iops;                 /* read.iops, or gbps * 1e9 / bs when absent */
    int status;                  /* fio's exit status, -1 if it did not exit */
} bu_fio_res;
/* Run `fio` (a path or a name on PATH) reading [offset, offset + size) of
 * path with io_uring, O_DIRECT, block size bs and depth qd, for at most
 * runtime_s seconds; rw is "read" or "randread". false when fio failed or
 * printed no usable JSON (out->status says how it exited). */
bool bu_fio_run(const char *fio, const char *path, const char *rw, uint64_t bs, unsigned qd,
                uint64_t size, uint64_t offset, double runtime_s, bu_fio_res *out);

#endif
