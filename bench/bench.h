/*
 * bench.h - the pieces embcache-bench's files share: options, the tables it
 * generates, results (with their repeats), and the harness that starts
 * daemons, imports tables and times gathers (bench_harness.c). The
 * scenarios live in scen_*.c, the output (lines, tables, goals, JSON, CSV,
 * plots, --check-json) in bench_output.c, options and main() in
 * embcache-bench.c. Everything runs in the bench's main thread unless a
 * scenario says otherwise (the miss and rowmiss scenarios' client threads,
 * the scale scenario's forked processes).
 */
#ifndef EC_BENCH_BENCH_H
#define EC_BENCH_BENCH_H

#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "bench/baseline.h"
#include "bench/bench_util.h"
#include "embcache.h"

#define MAX_LIST 16
#define MAX_REP 16
#define MODEL "bench"
#define TENSOR "emb"
#define RING_IDS (1u << 21)
#define VERIFY_CALLS 1000
#define NO_GPU_SLAB UINT64_MAX /* embcached's default device tier */
/* A same-memory comparison is fair while the file's resident bytes stay
 * within this factor of the target. */
#define FAIR_FACTOR 1.15

struct memhold;

/* ---- options ---- */

struct opts {
    const char *socket, *data_dir, *embcached, *dtype_name, *plot_dir, *json_path,
        *csv_path, *check_json;
    bool json, csv, quick, start_daemon, hold;
    uint64_t rows, dim, budget, seed, large_rows, large_budget, hold_slack;
    double warm; /* same-memory scenarios: untimed rows first, in cache capacities */
    unsigned repeat;
    bool tcp; /* --server-transport tcp */
    ec_cache_mode hit_mode; /* --hit-cache-mode: how hit and scale cache the table */
    double seconds;
    ec_dtype dtype;
    char scen[MAX_LIST][16];
    unsigned nscen;
    uint64_t batch[MAX_LIST];
    unsigned nbatch;
    char dist[2][8];
    unsigned ndist;
    uint64_t clients[MAX_LIST];
    unsigned nclients;
    char base[12][24];
    unsigned nbase;
    /* the gpu scenario */
    uint64_t gpu_batch[MAX_LIST], gpu_dims[MAX_LIST], gpu_table_mib;
    unsigned ngpu_batch, ngpu_dims;
    char gpu_dtype_buf[4][8];
    const char *gpu_dtypes[4];
    unsigned ngpu_dtypes;
    int gpu_device;
    const char *gpu_python, *gpu_torch;
};

/* ---- a generated table ---- */

struct table {
    const char *what;        /* "main", "large": for messages */
    uint64_t rows;
    unsigned char *src;      /* the rows; NULL: checked by recomputing fill_row() */
    char npy[PATH_MAX];      /* kept after import: the mmap baselines map it */
    uint64_t npy_data_off;   /* where row 0 starts in the .npy */
    char part_file[PATH_MAX];/* the partition file the import made ("" if unknown) */
    char model[64];
    ec_tensor_info info;     /* as resolved */
};

/* ---- results ---- */

/* One repeat of one configuration; -1 where not measured. */
struct rep {
    double rows_s, gbps, p50, p90, p99, p999, max, hit, iops;
};

struct result {
    char scenario[16], system[24], dist[16], note[640];
    char dtype[8];                    /* the table: --dtype, or the gpu scenario's own */
    char kv[1024];                    /* extra " key=value" pairs, in the line and JSON */
    uint64_t table_rows, dim, row_bytes;
    uint64_t batch, clients, qd, calls, rows_done, verified, mismatches; /* summed */
    double secs;                      /* summed over repeats */
    /* medians over the repeats (max: the largest) */
    double p50, p90, p99, p999, max, rows_s, gbps, hit_ratio, iops;
    struct rep rep[MAX_REP];
    unsigned nrep;
    int fair;                         /* -1: not a same-memory comparison */
    bool ok, err;
    bu_hist *h;                       /* merged over repeats; NULL where none */
};

/* ---- the run ---- */

struct ctx {
    struct opts o;
    pid_t daemon;   /* embcached's keeper; it forks the worker, which serves */
    char daemon_data[PATH_MAX]; /* its data directory (the worker's pid is in its lock) */
    uint64_t daemon_budget, daemon_shm;
    char *tmp; /* our temporary directory */
    char data[PATH_MAX], sock[PATH_MAX];
    ec_client *c;
    ec_tensor *t;
    struct table main;
    uint64_t row_bytes, table_bytes;
    struct result **res; /* each result its own allocation: pointers stay valid */
    size_t nres, capres;
    int failed;
    char notes[24][256];
    unsigned nnotes;
    struct memhold *hold; /* NULL: no holder (hold_why says why) */
    char hold_why[256];
};

extern volatile sig_atomic_t g_stop;
extern volatile pid_t g_daemon_pid;
extern FILE *txt; /* result lines: stdout, or stderr when JSON/CSV go to stdout */

typedef int (*gather_fn)(void *arg, const int64_t *ids, size_t n, void *out);

struct ec_arg {
    ec_tensor *t;
    uint64_t row_bytes;
};
int ec_gather_fn(void *arg, const int64_t *ids, size_t n, void *out);

struct bl_arg {
    const ec_baseline_ops *ops;
    ec_baseline *b;
};
int bl_gather_fn(void *arg, const int64_t *ids, size_t n, void *out);

/* ---- bench_harness.c ---- */

void note(struct ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
struct result *new_result(struct ctx *x, const char *scen, const char *sys, const char *dist,
                          uint64_t batch, uint64_t clients, uint64_t qd);
/* Append " key=value" to r->kv. */
void res_kv(struct result *r, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Append to r->note (space-separated). */
void res_note(struct result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Mark r failed, with why in its note. */
void res_fail(struct result *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* One repeat measured by a histogram of per-call latencies (merged into
 * r->h), rows in secs; hit < 0 when not measured. */
void res_add_hist(struct result *r, const bu_hist *h, uint64_t calls, uint64_t rows, double secs,
                  double hit);
/* One repeat given by its values (fio, the gpu scenario). */
void res_add_rep(struct result *r, const struct rep *v);
/* Medians and ranges over the repeats, ok; print the line; failures count. */
void res_finish(struct ctx *x, struct result *r);
struct rep rep_none(void);
double median_of(double *v, unsigned n);

void fill_row(const struct ctx *x, uint64_t r, unsigned char *out);
const char *npy_descr(ec_dtype d);
/* Write t->npy with t->rows rows, streaming; into t->src as well when it is
 * allocated. */
int write_npy(struct ctx *x, struct table *t);

void disconnect(struct ctx *x);
int connect_resolve(struct ctx *x);
void daemon_stop(struct ctx *x);
/* The pid of the daemon's worker (the process that serves and maps what it
 * touches), or -1. */
pid_t daemon_worker(const struct ctx *x);
uint64_t shm_size_for(const struct ctx *x);
/* Ask the daemon to cache the main table by `mode` (ec_model_cache_mode);
 * 0, or -1 with the reason on stderr. */
int set_cache_mode(struct ctx *x, ec_cache_mode mode);
/* "partitions", "rows" or "auto". */
const char *cache_mode_name(ec_cache_mode m);
uint64_t shm_size_for_budget(uint64_t budget);
int daemon_spawn(struct ctx *x, const char *data, const char *sock, uint64_t shm_bytes,
                 uint64_t budget, uint64_t gpu_slab);
/* A daemon for the main table with this budget (0: the segment) and
 * segment size (0: shm_size_for(x)), connected and resolved. */
int ensure_daemon(struct ctx *x, uint64_t budget, uint64_t shm);
/* Import t->npy as version 1 of t->model through c, whose daemon keeps its
 * files in data; sets t->part_file. The .npy is kept (the mmap baselines
 * map it). */
int import_table(struct ctx *x, ec_client *c, struct table *t, const char *data);

uint64_t verify_rows(const struct ctx *x, const struct table *t, const int64_t *ids, size_t n,
                     const unsigned char *out);
/* One repeat: windows of `batch` ids from the ring for `secs` seconds,
 * the first verify_calls calls checked against t. Folds into r; returns
 * the ids consumed (the ring is walked as pos = 0 whenever the next window
 * does not fit), or -1 on a failed call (r marked failed). */
int64_t timed_run(const struct ctx *x, const struct table *t, const char *what, gather_fn fn,
                  void *arg, const int64_t *ring, size_t ring_len, uint64_t batch, double secs,
                  uint64_t verify_calls, struct result *r, double *series, size_t nseries);
/* The same ids, untimed, for the warm-up seconds (min(0.25, --seconds/4)). */
/* Gather the first `rows` ids of ring (windows of batch), untimed, for at
 * most max_secs. Returns < 0 on a gather error, else the rows gathered. */
int64_t warm_rows(const struct ctx *x, gather_fn fn, void *arg, const int64_t *ring,
                  uint64_t rows, uint64_t batch, double max_secs);
int warmup(const struct ctx *x, gather_fn fn, void *arg, const int64_t *ring, size_t ring_len,
           uint64_t batch);
int64_t *make_ring(uint64_t rows, const char *dist, uint64_t seed, size_t len);
int prewarm(struct ctx *x);
/* The main table all resident in the mode of --hit-cache-mode: the mode
 * set, the version prewarmed, and, when the daemon caches it by rows,
 * every row gathered once. */
int make_resident(struct ctx *x);
bool batch_fits(struct ctx *x, const char *scen, const char *dist, uint64_t batch);
const ec_baseline_ops *find_baseline(const char *name);
bool baseline_wanted(const struct ctx *x, const char *name);

struct ecstats {
    uint64_t rows, hits, budget;
    uint64_t value_bytes, overhead_ppm, index_ppm; /* rows cached by row, what they cost beyond */
};
int read_stats(ec_client *c, struct ecstats *s);

/* ---- bench_output.c ---- */

void print_line(const struct result *r);
void print_table(const struct ctx *x);
void print_goals(const struct ctx *x);
void write_json(const struct ctx *x, FILE *f);
void write_csv(const struct ctx *x, FILE *f);
void write_plots(struct ctx *x);
/* Check a JSON file's shape, that every system's rows matched, and that
 * every scenario of `expect` (NULL-terminated) has a result. 0 if good. */
int check_json(const char *path, const char *const *expect);

/* ---- scenarios ---- */

int scen_hit(struct ctx *x);
int scen_scale(struct ctx *x);
int scen_miss(struct ctx *x);
int scen_rowmiss(struct ctx *x);
int scen_mixed(struct ctx *x);
int scen_large(struct ctx *x);

#endif
