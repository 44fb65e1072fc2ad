/*
 * embcache-bench.c - lookup latency and throughput of embcache, side by side
 * with what users run today (issue 4).
 *
 * Starts its own embcached (or attaches to one with --socket), imports a
 * generated table (default 1,000,000 x 128 f32; row r, word c derived from
 * a hash of (r, c) so every row can be checked), and runs named scenarios:
 *
 *   hit    batched gathers of resident rows, per batch size and id
 *          distribution, next to the baselines of bench/baseline.h (the
 *          flat-array and hash-map floors, Redis, memcached) on the same ids;
 *   miss   cold partition faults (version evicted; the pager reads
 *          O_DIRECT), one row per partition in file order, at depth 1 and
 *          with 32 concurrent clients, next to fio on the same file;
 *   mixed  a daemon whose --budget is a quarter of the table, Zipf ids:
 *          hit ratio, latency, throughput over time;
 *   scale  1, 2, 4, 8 client processes gathering at once;
 *   gpu    gathers into GPU memory from the device tier and from mapped
 *          host memory, next to the H2D limit and PyTorch (scenario_gpu.c,
 *          in a CUDA build; skipped otherwise).
 *
 * A scenario is one entry of the scenarios[] table: a function and a line.
 * Every result is one line of key=value with every parameter echoed; a
 * table with ratio columns and the goals follows (the gpu scenario
 * prints its own); --json / --csv write the same results; --plot draws PNGs
 * with gnuplot. Exit status: 0, 1 when a scenario failed or any row read
 * back differed from the source, 2 for bad usage, 77 when only the gpu
 * scenario was asked for and it cannot run here.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench/baseline.h"
#include "bench/bench_util.h"
#include "bench/scenario_gpu.h"
#include "core/partfile.h"
#include "shm/segment.h"
#include "embcache.h"

#define MAX_LIST 16
#define MODEL "bench"
#define TENSOR "emb"
#define RING_IDS (1u << 21)
#define VERIFY_CALLS 1000

/* Weak: present only when the server baselines are compiled in. */
extern void ec_bl_server_kill_all(void) __attribute__((weak));

/* ---- options ---- */

struct opts {
    const char *socket, *data_dir, *embcached, *dtype_name, *plot_dir, *json_path,
        *csv_path, *check_json;
    bool json, csv, quick, start_daemon;
    uint64_t rows, dim, budget, seed;
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
    char base[8][24];
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

/* ---- results ---- */

struct result {
    char scenario[16], system[24], dist[16], note[512];
    char dtype[8];                    /* the table: --dtype, or the gpu scenario's own */
    uint64_t table_rows, dim, row_bytes;
    uint64_t batch, clients, qd, calls, rows_done, verified, mismatches;
    double secs, p50, p90, p99, p999, max, rows_s, gbps, hit_ratio;
    bool ok;
    bu_hist *h; /* NULL where there is no histogram (fio) */
};

struct ctx {
    struct opts o;
    pid_t daemon;
    uint64_t daemon_budget;
    char *tmp;          /* our temporary directory */
    char data[PATH_MAX], sock[PATH_MAX], npy[PATH_MAX], part_file[PATH_MAX], model[64];
    ec_client *c;
    ec_tensor *t;
    ec_tensor_info info;
    unsigned char *src; /* the source table, rows x row_bytes */
    uint64_t row_bytes, table_bytes;
    struct result *res;
    size_t nres, capres;
    int failed;
    char notes[16][256];
    unsigned nnotes;
};

static volatile sig_atomic_t g_stop;
static volatile pid_t g_daemon_pid;
static FILE *txt; /* result lines: stdout, or stderr when JSON/CSV go to stdout */

static void on_signal(int sig)
{
    if (g_stop) { /* second signal: kill what we started and leave now */
        if (g_daemon_pid > 0)
            kill(g_daemon_pid, SIGKILL);
        if (ec_bl_server_kill_all)
            ec_bl_server_kill_all();
        _exit(128 + sig);
    }
    g_stop = 1;
}

static void note(struct ctx *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct ctx *x, const char *fmt, ...)
{
    va_list ap;
    char buf[256];

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "embcache-bench: %s\n", buf);
    if (x->nnotes < 16)
        snprintf(x->notes[x->nnotes++], sizeof(x->notes[0]), "%s", buf);
}

static struct result *new_result(struct ctx *x, const char *scen, const char *sys,
                                 const char *dist, uint64_t batch, uint64_t clients,
                                 uint64_t qd)
{
    struct result *r;

    if (x->nres == x->capres) {
        size_t cap = x->capres ? x->capres * 2 : 64;
        struct result *bigger = realloc(x->res, cap * sizeof(*bigger));
        if (!bigger) {
            fprintf(stderr, "embcache-bench: out of memory\n");
            exit(1);
        }
        x->res = bigger;
        x->capres = cap;
    }
    r = &x->res[x->nres++];
    memset(r, 0, sizeof(*r));
    snprintf(r->scenario, sizeof(r->scenario), "%s", scen);
    snprintf(r->system, sizeof(r->system), "%s", sys);
    snprintf(r->dist, sizeof(r->dist), "%s", dist);
    snprintf(r->dtype, sizeof(r->dtype), "%s", x->o.dtype_name);
    r->table_rows = x->o.rows;
    r->dim = x->o.dim;
    r->row_bytes = x->row_bytes;
    r->batch = batch;
    r->clients = clients;
    r->qd = qd;
    r->p50 = r->p90 = r->p99 = r->p999 = r->max = r->rows_s = r->gbps = r->hit_ratio = -1;
    return r;
}

static void finish_hist(struct result *r)
{
    if (!r->h || !r->h->count)
        return;
    r->p50 = (double)bu_hist_quantile(r->h, 0.50) / 1e3;
    r->p90 = (double)bu_hist_quantile(r->h, 0.90) / 1e3;
    r->p99 = (double)bu_hist_quantile(r->h, 0.99) / 1e3;
    r->p999 = (double)bu_hist_quantile(r->h, 0.999) / 1e3;
    r->max = (double)r->h->max / 1e3;
}

static void print_line(const struct result *r)
{
    fprintf(txt,
            "scenario=%s system=%s dtype=%s rows=%" PRIu64 " dim=%" PRIu64
            " row_bytes=%" PRIu64 " batch=%" PRIu64 " dist=%s clients=%" PRIu64
            " qd=%" PRIu64 " seconds=%.2f calls=%" PRIu64 " rows_done=%" PRIu64
            " p50_us=%.3f p90_us=%.3f p99_us=%.3f p999_us=%.3f max_us=%.3f"
            " rows_per_s=%.0f gbps=%.3f hit_ratio=%.4f verified_rows=%" PRIu64
            " mismatches=%" PRIu64 " ok=%d%s%s\n",
            r->scenario, r->system, r->dtype, r->table_rows, r->dim, r->row_bytes,
            r->batch, r->dist, r->clients, r->qd, r->secs, r->calls, r->rows_done, r->p50,
            r->p90, r->p99, r->p999, r->max, r->rows_s, r->gbps, r->hit_ratio, r->verified,
            r->mismatches, r->ok, r->note[0] ? " note=" : "", r->note);
    fflush(txt);
}

/* ---- the table ---- */

static uint64_t mix64(uint64_t v)
{
    v += 0x9e3779b97f4a7c15ULL;
    v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ULL;
    v = (v ^ (v >> 27)) * 0x94d049bb133111ebULL;
    return v ^ (v >> 31);
}

/* Row r: for f32 the demo's values (exact floats in [-0.5, 0.5)), for other
 * dtypes the bytes of a hash of (r, word); compared bytewise. */
static void fill_row(const struct ctx *x, uint64_t r, unsigned char *out)
{
    if (x->o.dtype == EC_DTYPE_F32) {
        float *f = (float *)(void *)out;
        for (uint64_t c = 0; c < x->o.dim; c++) {
            uint64_t h = mix64(r * 0x100000001b3ULL + c);
            f[c] = (float)((h >> 44) & 0xfffff) / 1048576.0f - 0.5f;
        }
        return;
    }
    for (uint64_t w = 0; w * 8 < x->row_bytes; w++) {
        uint64_t h = mix64(r * 0x100000001b3ULL + w) & 0x3f3f3f3f3f3f3f3fULL; /* no NaN/Inf */
        size_t n = x->row_bytes - w * 8 < 8 ? x->row_bytes - w * 8 : 8;
        memcpy(out + w * 8, &h, n);
    }
}

static const char *npy_descr(ec_dtype d)
{
    switch (d) {
    case EC_DTYPE_F32: return "<f4";
    case EC_DTYPE_F16: return "<f2";
    case EC_DTYPE_F64: return "<f8";
    case EC_DTYPE_I8: return "|i1";
    case EC_DTYPE_U8: return "|u1";
    case EC_DTYPE_I32: return "<i4";
    case EC_DTYPE_I64: return "<i8";
    default: return NULL;
    }
}

static int write_npy(struct ctx *x)
{
    char header[160];
    size_t hl;
    FILE *f;
    bu_progress pg;

    snprintf(header, sizeof(header),
             "{'descr': '%s', 'fortran_order': False, 'shape': (%" PRIu64 ", %" PRIu64 "), }",
             npy_descr(x->o.dtype), x->o.rows, x->o.dim);
    hl = strlen(header);
    while ((10 + hl + 1) % 64)
        header[hl++] = ' ';
    header[hl++] = '\n';
    header[hl] = '\0';
    f = fopen(x->npy, "wb");
    if (!f) {
        fprintf(stderr, "embcache-bench: cannot create %s: %s\n", x->npy, strerror(errno));
        return -1;
    }
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hl & 0xff), f);
    fputc((int)(hl >> 8), f);
    fwrite(header, 1, hl, f);
    bu_progress_start(&pg, "generating the table", (double)x->o.rows);
    for (uint64_t r = 0; r < x->o.rows; r++) {
        fill_row(x, r, x->src + r * x->row_bytes);
        if ((r & 4095) == 0)
            bu_progress_update(&pg, (double)r);
    }
    bu_progress_end(&pg);
    if (fwrite(x->src, 1, x->table_bytes, f) != x->table_bytes || fclose(f)) {
        fprintf(stderr, "embcache-bench: writing %s failed: %s\n", x->npy, strerror(errno));
        return -1;
    }
    return 0;
}

/* ---- the daemon ---- */

static int socket_ready(const char *path)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0), ok;

    if (fd < 0)
        return 0;
    if (snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path) >= (int)sizeof(sa.sun_path)) {
        close(fd);
        return 0;
    }
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static void disconnect(struct ctx *x)
{
    ec_tensor_release(x->t);
    ec_client_close(x->c);
    x->t = NULL;
    x->c = NULL;
}

static int connect_resolve(struct ctx *x)
{
    int rc = ec_client_connect(x->sock, &x->c);
    if (rc == 0)
        rc = ec_tensor_resolve(x->c, x->model, "1", TENSOR, &x->t);
    if (rc == 0)
        rc = ec_tensor_info_get(x->t, &x->info);
    if (rc) {
        fprintf(stderr, "embcache-bench: %s\n", ec_last_error());
        disconnect(x);
    }
    return rc;
}

static void daemon_stop(struct ctx *x)
{
    int st;

    if (x->daemon <= 0)
        return;
    disconnect(x);
    kill(x->daemon, SIGTERM);
    for (int i = 0; i < 1000; i++) {
        if (waitpid(x->daemon, &st, WNOHANG) == x->daemon)
            goto done;
        usleep(10000);
    }
    kill(x->daemon, SIGKILL);
    waitpid(x->daemon, &st, 0);
done:
    x->daemon = 0;
    g_daemon_pid = 0;
}

static uint64_t shm_size_for(const struct ctx *x)
{
    uint64_t s = x->table_bytes + x->table_bytes / 4 + (64u << 20);
    return (s + (1u << 20) - 1) / (1u << 20) * (1u << 20);
}

#define NO_GPU_SLAB UINT64_MAX /* embcached's default device tier */

/* Start an embcached of ours on data and sock, with a segment of shm bytes,
 * the given budget (0: the whole segment) and --gpu-slab (NO_GPU_SLAB: not
 * given). Its log goes to embcached.log in our temporary directory. */
static int daemon_spawn(struct ctx *x, const char *data, const char *sock, uint64_t shm_bytes,
                        uint64_t budget, uint64_t gpu_slab)
{
    char shm[32], bud[32], slab[32], log[PATH_MAX + 16];
    const char *argv[16];
    int n = 0, st;
    pid_t pid;

    snprintf(shm, sizeof(shm), "%" PRIu64, shm_bytes);
    snprintf(bud, sizeof(bud), "%" PRIu64, budget);
    snprintf(slab, sizeof(slab), "%" PRIu64, gpu_slab);
    snprintf(log, sizeof(log), "%s/embcached.log", x->tmp);
    argv[n++] = x->o.embcached;
    argv[n++] = "--data-dir";
    argv[n++] = data;
    argv[n++] = "--socket";
    argv[n++] = sock;
    argv[n++] = "--shm-size";
    argv[n++] = shm;
    argv[n++] = "--drop-segment";
    argv[n++] = "--quiet";
    if (budget) {
        argv[n++] = "--budget";
        argv[n++] = bud;
    }
    if (gpu_slab != NO_GPU_SLAB) {
        argv[n++] = "--gpu-slab";
        argv[n++] = slab;
    }
    argv[n] = NULL;
    fflush(NULL);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        setpgid(0, 0); /* a terminal's Ctrl-C reaches only us; we stop it */
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    x->daemon = pid;
    g_daemon_pid = pid;
    x->daemon_budget = budget;
    for (int i = 0; i < 3000; i++) {
        if (waitpid(pid, &st, WNOHANG) == pid) {
            x->daemon = 0;
            g_daemon_pid = 0;
            fprintf(stderr, "embcache-bench: %s exited at start-up (status %d); its log: %s\n",
                    x->o.embcached, WIFEXITED(st) ? WEXITSTATUS(st) : -1, log);
            return -1;
        }
        if (socket_ready(sock))
            return 0;
        usleep(10000);
    }
    fprintf(stderr, "embcache-bench: embcached did not listen on %s within 30 s\n", sock);
    daemon_stop(x);
    return -1;
}

/* Start our embcached for the main table with the given budget. */
static int daemon_start(struct ctx *x, uint64_t budget)
{
    return daemon_spawn(x, x->data, x->sock, shm_size_for(x), budget, NO_GPU_SLAB);
}

/* Make sure a daemon with this budget serves the table and we are connected. */
static int ensure_daemon(struct ctx *x, uint64_t budget)
{
    if (!x->o.start_daemon)
        return x->c ? 0 : connect_resolve(x);
    if (x->daemon > 0 && x->daemon_budget == budget && x->c)
        return 0;
    daemon_stop(x);
    if (daemon_start(x, budget))
        return -1;
    return connect_resolve(x);
}

/* The newest *.ecp under dir/parts that was not in `before` (a list of names). */
static void list_parts(const char *data, char *names, size_t len)
{
    char dir[PATH_MAX];
    DIR *d;
    struct dirent *e;
    size_t used = 0;

    names[0] = '\0';
    snprintf(dir, sizeof(dir), "%s/parts", data);
    d = opendir(dir);
    if (!d)
        return;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".ecp") && used + l + 2 < len) {
            memcpy(names + used, e->d_name, l);
            used += l;
            names[used++] = '\n';
            names[used] = '\0';
        }
    }
    closedir(d);
}

static int import_table(struct ctx *x)
{
    ec_import_opts io = {.model = x->model, .version = 1, .round = -1};
    const char *paths[1] = {x->npy};
    static char before[1 << 16], after[1 << 16];
    int rc;

    list_parts(x->data, before, sizeof(before));
    rc = ec_model_import(x->c, &io, paths, 1, NULL);
    if (rc) {
        fprintf(stderr, "embcache-bench: import failed: %s\n", ec_last_error());
        return rc;
    }
    list_parts(x->data, after, sizeof(after));
    for (char *p = after, *nl; *p; p = nl + 1) {
        nl = strchr(p, '\n');
        *nl = '\0';
        char key[NAME_MAX + 2];
        if (snprintf(key, sizeof(key), "%s\n", p) >= (int)sizeof(key))
            continue;
        if (!strstr(before, key) &&
            snprintf(x->part_file, sizeof(x->part_file), "%s/parts/%s", x->data, p) >=
                (int)sizeof(x->part_file))
            x->part_file[0] = '\0';
    }
    unlink(x->npy); /* the partition file has it now */
    return 0;
}

/* ---- the timed loop ---- */

typedef int (*gather_fn)(void *arg, const int64_t *ids, size_t n, void *out);

struct ec_arg {
    ec_tensor *t;
    uint64_t row_bytes;
};

static int ec_gather_fn(void *arg, const int64_t *ids, size_t n, void *out)
{
    struct ec_arg *a = arg;
    return ec_tensor_gather(a->t, ids, n, out, n * a->row_bytes);
}

struct bl_arg {
    const ec_baseline_ops *ops;
    ec_baseline *b;
};

static int bl_gather_fn(void *arg, const int64_t *ids, size_t n, void *out)
{
    struct bl_arg *a = arg;
    return a->ops->gather(a->b, ids, n, out);
}

static uint64_t verify_rows(const struct ctx *x, const int64_t *ids, size_t n,
                            const unsigned char *out)
{
    uint64_t bad = 0;
    for (size_t k = 0; k < n; k++)
        if (memcmp(out + k * x->row_bytes, x->src + (uint64_t)ids[k] * x->row_bytes,
                   x->row_bytes))
            bad++;
    return bad;
}

/* Gather windows of `batch` ids from the ring for `secs` seconds. */
static void timed_run(const struct ctx *x, const char *what, gather_fn fn, void *arg,
                      const int64_t *ring, size_t ring_len, uint64_t batch, double secs,
                      uint64_t verify_calls, struct result *r, double *series,
                      size_t nseries)
{
    unsigned char *out = malloc(batch * x->row_bytes);
    uint64_t t0, end, vt = 0, pos = 0, now;
    bu_progress pg;
    char label[96];

    r->h = calloc(1, sizeof(*r->h));
    if (!out || !r->h) {
        snprintf(r->note, sizeof(r->note), "out of memory");
        free(out);
        return;
    }
    bu_hist_reset(r->h);
    snprintf(label, sizeof(label), "%s %s b=%" PRIu64, r->scenario, what, batch);
    bu_progress_start(&pg, label, secs);
    t0 = bu_now_ns();
    end = t0 + (uint64_t)(secs * 1e9);
    now = t0;
    while (!g_stop && (now < end || r->calls == 0)) {
        if (pos + batch > ring_len)
            pos = 0;
        const int64_t *ids = ring + pos;
        uint64_t a = bu_now_ns();
        int rc = fn(arg, ids, batch, out);
        now = bu_now_ns();
        if (rc) {
            snprintf(r->note, sizeof(r->note), "gather failed after %" PRIu64 " calls: %s",
                     r->calls, fn == ec_gather_fn ? ec_last_error() : "baseline error");
            break;
        }
        bu_hist_add(r->h, now - a);
        if (series && nseries) {
            size_t bi = (size_t)((now - t0) / 500000000u);
            if (bi < nseries)
                series[bi] += (double)batch;
        }
        r->calls++;
        r->rows_done += batch;
        pos += batch;
        if (r->calls <= verify_calls) {
            r->mismatches += verify_rows(x, ids, batch, out);
            r->verified += batch;
            uint64_t v = bu_now_ns();
            vt += v - now;
            now = v;
        }
        if ((r->calls & 255) == 0)
            bu_progress_update(&pg, (double)(now - t0) / 1e9);
    }
    bu_progress_end(&pg);
    r->secs = (double)(now - t0 - vt) / 1e9;
    if (r->secs > 0) {
        r->rows_s = (double)r->rows_done / r->secs;
        r->gbps = r->rows_s * (double)x->row_bytes / 1e9;
    }
    finish_hist(r);
    r->ok = !r->note[0] && r->mismatches == 0;
    free(out);
}

static int64_t *make_ring(const struct ctx *x, const char *dist, uint64_t seed, size_t len)
{
    int64_t *ring = malloc(len * sizeof(*ring));
    bu_zipf *z = bu_zipf_new(x->o.rows, !strcmp(dist, "zipf") ? 0.99 : 0.0, seed);

    if (!ring || !z) {
        free(ring);
        bu_zipf_free(z);
        return NULL;
    }
    for (size_t i = 0; i < len; i++)
        ring[i] = (int64_t)bu_zipf_next(z);
    bu_zipf_free(z);
    return ring;
}

static int prewarm(struct ctx *x)
{
    ec_prewarm_progress p;
    bu_progress pg;
    int rc;

    bu_progress_start(&pg, "prewarm", 1);
    for (;;) {
        rc = ec_model_prewarm(x->c, x->model, "1", 0, &p);
        if (rc) {
            fprintf(stderr, "embcache-bench: prewarm failed: %s\n", ec_last_error());
            return rc;
        }
        if (p.finished)
            break;
        if (g_stop)
            return -1;
        bu_progress_update(&pg, p.partitions ? (double)p.done / (double)p.partitions : 0);
        usleep(20000);
    }
    bu_progress_end(&pg);
    if (p.failed) {
        fprintf(stderr, "embcache-bench: prewarm: %" PRIu64 " partitions failed: %s\n",
                p.failed, ec_last_error());
        return -1;
    }
    return 0;
}

static bool batch_fits(struct ctx *x, const char *scen, const char *dist, uint64_t batch)
{
    if (batch <= x->o.rows)
        return true;
    struct result *r = new_result(x, scen, "embcache", dist, batch, 1, 1);
    snprintf(r->note, sizeof(r->note),
             "batch %" PRIu64 " is larger than the table (%" PRIu64 " rows): skipped",
             batch, x->o.rows);
    fprintf(stderr, "embcache-bench: %s: %s\n", scen, r->note);
    print_line(r);
    x->failed = 1;
    return false;
}

/* ---- scenario: hit ---- */

static int scen_hit(struct ctx *x)
{
    struct bl { const ec_baseline_ops *ops; ec_baseline *b; } bls[8];
    unsigned nbl = 0;
    char nb[256];

    if (ensure_daemon(x, 0) || prewarm(x))
        return -1;
    for (unsigned i = 0; i < x->o.nbase && !g_stop; i++) {
        const ec_baseline_ops *ops = NULL;
        for (const ec_baseline_ops *const *p = ec_baselines; *p; p++)
            if (!strcmp((*p)->name, x->o.base[i]))
                ops = *p;
        if (!ops) {
            note(x, "baseline %s is not compiled in (hiredis/libmemcached not found at build "
                    "time: apt-get install libhiredis-dev libmemcached-dev, then rebuild)",
                 x->o.base[i]);
            continue;
        }
        nb[0] = '\0';
        ec_baseline *b = NULL;
        if (ops->open(&b, nb, sizeof(nb))) {
            note(x, "baseline %s unavailable: %s", ops->name, nb[0] ? nb : "open failed");
            continue;
        }
        fprintf(stderr, "embcache-bench: loading %" PRIu64 " rows into %s\n", x->o.rows,
                ops->name);
        if (ops->load(b, x->src, x->o.rows, x->row_bytes)) {
            note(x, "baseline %s: loading the rows failed; skipped", ops->name);
            ops->close(b);
            continue;
        }
        bls[nbl].ops = ops;
        bls[nbl++].b = b;
    }
    for (unsigned d = 0; d < x->o.ndist && !g_stop; d++) {
        int64_t *ring = make_ring(x, x->o.dist[d], x->o.seed + d, RING_IDS);
        if (!ring)
            break;
        for (unsigned bi = 0; bi < x->o.nbatch && !g_stop; bi++) {
            uint64_t batch = x->o.batch[bi];
            if (!batch_fits(x, "hit", x->o.dist[d], batch))
                continue;
            struct ec_arg ea = {x->t, x->row_bytes};
            struct result *r = new_result(x, "hit", "embcache", x->o.dist[d], batch, 1, 1);
            timed_run(x, "embcache", ec_gather_fn, &ea, ring, RING_IDS, batch, x->o.seconds,
                      VERIFY_CALLS, r, NULL, 0);
            print_line(r);
            if (!r->ok)
                x->failed = 1;
            for (unsigned k = 0; k < nbl && !g_stop; k++) {
                struct bl_arg ba = {bls[k].ops, bls[k].b};
                r = new_result(x, "hit", bls[k].ops->name, x->o.dist[d], batch, 1, 1);
                timed_run(x, bls[k].ops->name, bl_gather_fn, &ba, ring, RING_IDS, batch,
                          x->o.seconds, VERIFY_CALLS, r, NULL, 0);
                print_line(r);
                if (!r->ok)
                    x->failed = 1;
            }
        }
        free(ring);
    }
    for (unsigned k = 0; k < nbl; k++)
        bls[k].ops->close(bls[k].b);
    return 0;
}

/* ---- scenario: scale ---- */

struct scale_shared {
    atomic_uint ready;
    atomic_uint go;
    struct {
        uint64_t rows, calls, verified, mismatches, ns;
        int rc;
        bu_hist h;
    } p[64];
};

static void scale_child(struct ctx *x, struct scale_shared *sh, unsigned i, uint64_t batch)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    int64_t *ring = NULL;
    unsigned char *out = malloc(batch * x->row_bytes);
    size_t len = 1u << 18, pos = 0;
    uint64_t t0, end, now, vt = 0;

    sh->p[i].rc = 1;
    bu_hist_reset(&sh->p[i].h);
    if (ec_client_connect(x->sock, &c) || ec_tensor_resolve(c, x->model, "1", TENSOR, &t)) {
        fprintf(stderr, "embcache-bench: scale client %u: %s\n", i, ec_last_error());
        atomic_fetch_add(&sh->ready, 1);
        _exit(1);
    }
    ring = make_ring(x, "uniform", x->o.seed * 131 + i, len);
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go) && !g_stop)
        usleep(200);
    if (!ring || !out)
        _exit(1);
    t0 = bu_now_ns();
    end = t0 + (uint64_t)(x->o.seconds * 1e9);
    now = t0;
    while (!g_stop && now < end) {
        if (pos + batch > len)
            pos = 0;
        uint64_t a = bu_now_ns();
        if (ec_tensor_gather(t, ring + pos, batch, out, batch * x->row_bytes)) {
            fprintf(stderr, "embcache-bench: scale client %u: %s\n", i, ec_last_error());
            _exit(1);
        }
        now = bu_now_ns();
        bu_hist_add(&sh->p[i].h, now - a);
        sh->p[i].calls++;
        sh->p[i].rows += batch;
        if (sh->p[i].calls <= 100) {
            sh->p[i].mismatches += verify_rows(x, ring + pos, batch, out);
            sh->p[i].verified += batch;
            uint64_t v = bu_now_ns();
            vt += v - now;
            now = v;
        }
        pos += batch;
    }
    sh->p[i].ns = now - t0 - vt;
    sh->p[i].rc = 0;
    _exit(0); /* not ec_client_close: the parent's connection is not ours to touch */
}

static int scen_scale(struct ctx *x)
{
    const uint64_t batch = x->o.rows >= 256 ? 256 : x->o.rows;
    struct scale_shared *sh;

    if (ensure_daemon(x, 0) || prewarm(x))
        return -1;
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED)
        return -1;
    for (unsigned ci = 0; ci < x->o.nclients && !g_stop; ci++) {
        unsigned n = (unsigned)x->o.clients[ci];
        pid_t pids[64];
        unsigned started = 0;
        struct result *r = new_result(x, "scale", "embcache", "uniform", batch, n, 1);

        memset(sh, 0, sizeof(*sh));
        fflush(NULL);
        for (unsigned i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0)
                scale_child(x, sh, i, batch);
            if (p < 0)
                break;
            pids[started++] = p;
        }
        for (int w = 0; w < 3000 && atomic_load(&sh->ready) < started && !g_stop; w++)
            usleep(10000);
        atomic_store(&sh->go, 1);
        for (unsigned i = 0; i < started; i++) {
            int st;
            while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
                if (g_stop)
                    kill(pids[i], SIGKILL);
        }
        r->h = calloc(1, sizeof(*r->h));
        if (!r->h)
            break;
        bu_hist_reset(r->h);
        double maxs = 0, worst = 0;
        size_t nl = 0;
        nl += (size_t)snprintf(r->note, sizeof(r->note), "per_process_p99_us=");
        for (unsigned i = 0; i < started; i++) {
            bu_hist_merge(r->h, &sh->p[i].h);
            r->calls += sh->p[i].calls;
            r->rows_done += sh->p[i].rows;
            r->verified += sh->p[i].verified;
            r->mismatches += sh->p[i].mismatches;
            if ((double)sh->p[i].ns / 1e9 > maxs)
                maxs = (double)sh->p[i].ns / 1e9;
            double p99 = (double)bu_hist_quantile(&sh->p[i].h, 0.99) / 1e3;
            if (p99 > worst)
                worst = p99;
            if (nl < sizeof(r->note) - 16)
                nl += (size_t)snprintf(r->note + nl, sizeof(r->note) - nl, "%s%.2f",
                                       i ? "/" : "", p99);
            if (sh->p[i].rc) {
                snprintf(r->note, sizeof(r->note), "client process %u failed", i);
                break;
            }
        }
        r->secs = maxs;
        if (maxs > 0) {
            r->rows_s = (double)r->rows_done / maxs;
            r->gbps = r->rows_s * (double)x->row_bytes / 1e9;
        }
        finish_hist(r);
        r->ok = started == n && r->mismatches == 0 && !strstr(r->note, "failed");
        print_line(r);
        if (!r->ok)
            x->failed = 1;
    }
    munmap(sh, sizeof(*sh));
    return 0;
}

/* ---- scenario: mixed ---- */

struct statpair { uint64_t rows, hits; };

static int stat_cb(const char *name, uint64_t v, void *arg)
{
    struct statpair *s = arg;
    if (!strcmp(name, "client_rows"))
        s->rows = v;
    else if (!strcmp(name, "client_hit_rows"))
        s->hits = v;
    return 0;
}

static int scen_mixed(struct ctx *x)
{
    uint64_t budget = x->o.budget ? x->o.budget : x->table_bytes / 4;
    uint64_t batch = 256;
    struct statpair a = {0, 0}, b = {0, 0};
    size_t nseries = (size_t)(x->o.seconds * 2) + 2;
    double *series;

    if (!x->o.start_daemon) {
        note(x, "mixed: skipped: it needs its own daemon for --budget (run without --socket)");
        return 0;
    }
    if (budget < (4u << 20))
        budget = 4u << 20;
    if (ensure_daemon(x, budget))
        return -1;
    if (!batch_fits(x, "mixed", "zipf", batch))
        return 0;
    series = calloc(nseries, sizeof(*series));
    int64_t *ring = make_ring(x, "zipf", x->o.seed + 7, RING_IDS);
    if (!series || !ring) {
        free(series);
        free(ring);
        return -1;
    }
    ec_client_stats(x->c, stat_cb, &a);
    struct ec_arg ea = {x->t, x->row_bytes};
    struct result *r = new_result(x, "mixed", "embcache", "zipf", batch, 1, 1);
    timed_run(x, "embcache", ec_gather_fn, &ea, ring, RING_IDS, batch, x->o.seconds,
              VERIFY_CALLS, r, series, nseries);
    ec_client_stats(x->c, stat_cb, &b);
    if (b.rows > a.rows)
        r->hit_ratio = (double)(b.hits - a.hits) / (double)(b.rows - a.rows);
    size_t nl = (size_t)snprintf(r->note, sizeof(r->note),
                                 "budget=%" PRIu64 " rows_per_s_per_0.5s=", budget);
    for (size_t i = 0; i < nseries && (double)i * 0.5 < r->secs + 0.25; i++)
        if (nl < sizeof(r->note) - 16)
            nl += (size_t)snprintf(r->note + nl, sizeof(r->note) - nl, "%s%.0f", i ? "," : "",
                                   series[i] * 2);
    print_line(r);
    if (!r->ok)
        x->failed = 1;
    free(series);
    free(ring);
    return 0;
}

/* ---- scenario: miss ---- */

struct fault_shared {
    struct ctx *x;
    atomic_uint_fast64_t next;
    pthread_mutex_t mu;
    bu_hist *h;
    uint64_t mismatches, errors;
};

static void *fault_thread(void *arg)
{
    struct fault_shared *fs = arg;
    struct ctx *x = fs->x;
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    unsigned char *out = malloc(x->row_bytes);
    bu_hist h;

    bu_hist_reset(&h);
    if (!out || ec_client_connect(x->sock, &c) ||
        ec_tensor_resolve(c, x->model, "1", TENSOR, &t)) {
        pthread_mutex_lock(&fs->mu);
        fs->errors++;
        pthread_mutex_unlock(&fs->mu);
        goto out;
    }
    for (;;) {
        uint64_t p = atomic_fetch_add(&fs->next, 1);
        if (p >= x->info.partitions || g_stop)
            break;
        int64_t id = (int64_t)(p * x->info.rows_per_partition);
        uint64_t a = bu_now_ns();
        int rc = ec_tensor_gather(t, &id, 1, out, x->row_bytes);
        bu_hist_add(&h, bu_now_ns() - a);
        pthread_mutex_lock(&fs->mu);
        if (rc)
            fs->errors++;
        else
            fs->mismatches += verify_rows(x, &id, 1, out);
        pthread_mutex_unlock(&fs->mu);
    }
out:
    pthread_mutex_lock(&fs->mu);
    bu_hist_merge(fs->h, &h);
    pthread_mutex_unlock(&fs->mu);
    ec_tensor_release(t);
    ec_client_close(c);
    free(out);
    return NULL;
}

static void run_fio(struct ctx *x, const ec_partfile_meta *m, unsigned qd, struct result *r)
{
    bu_fio_res f;

    if (!bu_fio_run("fio", x->part_file, "read", m->stride, qd, m->partitions * m->stride,
                    m->data_off, x->o.seconds, &f)) {
        snprintf(r->note, sizeof(r->note), "fio failed (status %d) or printed no usable JSON",
                 f.status);
        return;
    }
    r->gbps = f.gbps;
    r->p50 = f.p50_us;
    r->p99 = f.p99_us;
    r->ok = true;
    snprintf(r->note, sizeof(r->note), "fio ioengine=io_uring direct=1 rw=read bs=%" PRIu64,
             m->stride);
}

static int scen_miss(struct ctx *x)
{
    unsigned char *out;
    bu_progress pg;
    ec_partfile_meta m;
    int fd = -1, st;
    bool have_fio = false;

    if (ensure_daemon(x, 0))
        return -1;
    out = malloc(x->row_bytes);
    if (!out)
        return -1;
    uint64_t part_bytes = x->info.rows_per_partition * x->row_bytes;
    for (int variant = 0; variant < 2 && !g_stop; variant++) {
        unsigned qd = variant ? 32 : 1;
        struct result *r = new_result(x, "miss", "embcache", "seq", 1, qd, qd);
        if (ec_model_evict(x->c, x->model, "1", NULL)) {
            snprintf(r->note, sizeof(r->note), "evict failed: %s", ec_last_error());
            print_line(r);
            x->failed = 1;
            continue;
        }
        r->h = calloc(1, sizeof(*r->h));
        if (!r->h)
            break;
        bu_hist_reset(r->h);
        uint64_t t0 = bu_now_ns();
        if (qd == 1) {
            bu_progress_start(&pg, "miss: cold faults, one client", (double)x->info.partitions);
            for (uint64_t p = 0; p < x->info.partitions && !g_stop; p++) {
                int64_t id = (int64_t)(p * x->info.rows_per_partition);
                uint64_t a = bu_now_ns();
                int rc = ec_tensor_gather(x->t, &id, 1, out, x->row_bytes);
                bu_hist_add(r->h, bu_now_ns() - a);
                if (rc) {
                    snprintf(r->note, sizeof(r->note), "gather failed: %s", ec_last_error());
                    break;
                }
                r->mismatches += verify_rows(x, &id, 1, out);
                r->verified++;
                bu_progress_update(&pg, (double)p);
            }
            bu_progress_end(&pg);
        } else {
            struct fault_shared fs = {.x = x, .h = r->h};
            pthread_t th[32];
            unsigned nt = 0;
            pthread_mutex_init(&fs.mu, NULL);
            atomic_init(&fs.next, 0);
            for (unsigned i = 0; i < qd; i++)
                if (pthread_create(&th[nt], NULL, fault_thread, &fs) == 0)
                    nt++;
            for (unsigned i = 0; i < nt; i++)
                pthread_join(th[i], NULL);
            pthread_mutex_destroy(&fs.mu);
            r->mismatches = fs.mismatches;
            r->verified = r->h->count - fs.errors;
            if (fs.errors)
                snprintf(r->note, sizeof(r->note), "%" PRIu64 " faults failed", fs.errors);
        }
        r->secs = (double)(bu_now_ns() - t0) / 1e9;
        r->calls = r->rows_done = r->h->count;
        if (r->secs > 0) {
            r->rows_s = (double)r->rows_done / r->secs;
            r->gbps = (double)r->calls * (double)part_bytes / r->secs / 1e9;
        }
        finish_hist(r);
        r->ok = !r->note[0] && r->mismatches == 0;
        size_t l = strlen(r->note);
        snprintf(r->note + l, sizeof(r->note) - l, "%spartition_bytes=%" PRIu64
                 " partitions=%" PRIu64 " gbps_of_partition_bytes", l ? " " : "", part_bytes,
                 x->info.partitions);
        print_line(r);
        if (!r->ok)
            x->failed = 1;
    }
    free(out);

    /* fio on the same file, bytes, block size and depth */
    {
        char *argv[] = {(char *)"fio", (char *)"--version", NULL};
        char *v = bu_run_capture(argv, &st);
        have_fio = v && WIFEXITED(st) && WEXITSTATUS(st) == 0 && !strncmp(v, "fio", 3);
        free(v);
    }
    if (!have_fio) {
        note(x, "miss: fio not installed (apt-get install fio): no device baseline");
        return 0;
    }
    if (!x->part_file[0] || ec_partfile_open(x->part_file, &m, &fd)) {
        note(x, "miss: the partition file is unknown here (attach mode without --data-dir?): "
                "no fio baseline");
        return 0;
    }
    close(fd);
    for (int variant = 0; variant < 2 && !g_stop; variant++) {
        unsigned qd = variant ? 32 : 1;
        struct result *r = new_result(x, "miss", "fio", "seq", 1, qd, qd);
        int cfd = open(x->part_file, O_RDONLY);
        if (cfd >= 0) {
            (void)posix_fadvise(cfd, 0, 0, POSIX_FADV_DONTNEED);
            close(cfd);
        }
        run_fio(x, &m, qd, r);
        print_line(r);
    }
    return 0;
}

/* ---- scenario: gpu (scenario_gpu.c) ---- */

/* The gpu scenario's daemons: each on its own data directory and socket,
 * in the harness's daemon slot, so a signal and the exit path stop them. */
static int gpu_daemon_start(void *h, const char *data, const char *sock, uint64_t shm_bytes,
                            uint64_t gpu_slab)
{
    struct ctx *x = h;

    daemon_stop(x);
    if (daemon_spawn(x, data, sock, shm_bytes, 0, gpu_slab))
        return -1;
    x->daemon_budget = UINT64_MAX; /* not the main table's: ensure_daemon() restarts */
    return 0;
}

static void gpu_daemon_stop(void *h)
{
    daemon_stop(h);
}

static void gpu_emit(void *h, bench_gpu_result *g)
{
    struct ctx *x = h;
    struct result *r = new_result(x, "gpu", g->system, "uniform", g->batch, 1, 1);

    snprintf(r->dtype, sizeof(r->dtype), "%s", g->dtype ? g->dtype : "-");
    r->table_rows = g->rows;
    r->dim = g->dim;
    r->row_bytes = g->row_bytes;
    r->secs = g->secs;
    r->calls = g->calls;
    r->rows_done = g->rows_done;
    r->verified = g->verified;
    r->mismatches = g->mismatches;
    r->rows_s = g->rows_s;
    r->gbps = g->gbps;
    r->ok = g->ok;
    snprintf(r->note, sizeof(r->note), "%s", g->note);
    r->h = g->h;
    g->h = NULL;
    if (r->h && r->h->count) {
        finish_hist(r);
    } else {
        r->p50 = g->p50_us;
        r->p90 = g->p90_us;
        r->p99 = g->p99_us;
        r->p999 = g->p999_us;
        r->max = g->max_us;
    }
    print_line(r);
    if (!r->ok)
        x->failed = 1;
}

static void gpu_note(void *h, const char *msg)
{
    note(h, "%s", msg);
}

/* Whether the gpu scenario can run: built with CUDA, a usable GPU, our own
 * daemons. false with why otherwise. */
static bool gpu_runnable(const struct opts *o, char *why, size_t len)
{
    if (!bench_gpu_run || !bench_gpu_probe) {
        snprintf(why, len, "this embcache-bench was built without CUDA (configure where the "
                           "toolkit is installed, with -DEMBCACHE_CUDA=ON)");
        return false;
    }
    if (bench_gpu_probe(o->gpu_device, why, len))
        return false;
    if (!o->start_daemon) {
        snprintf(why, len, "it needs daemons of its own, with and without the device tier "
                           "(run without --socket)");
        return false;
    }
    return true;
}

static int scen_gpu(struct ctx *x)
{
    char why[256];
    bench_gpu_env env = {
        .tmp = x->tmp,
        .batch = x->o.gpu_batch,
        .nbatch = x->o.ngpu_batch,
        .dims = x->o.gpu_dims,
        .ndims = x->o.ngpu_dims,
        .dtypes = x->o.gpu_dtypes,
        .ndtypes = x->o.ngpu_dtypes,
        .table_mib = x->o.gpu_table_mib,
        .seconds = x->o.seconds,
        .device = x->o.gpu_device,
        .seed = x->o.seed,
        .python = x->o.gpu_python,
        .torch_script = x->o.gpu_torch,
        .out = txt,
        .stop = &g_stop,
        .daemon_start = gpu_daemon_start,
        .daemon_stop = gpu_daemon_stop,
        .emit = gpu_emit,
        .note = gpu_note,
        .h = x,
    };
    int rc;

    if (!gpu_runnable(&x->o, why, sizeof(why))) {
        note(x, "gpu scenario skipped: %s", why);
        return 0;
    }
    daemon_stop(x); /* the main table's daemon would hold GPU and host memory */
    rc = bench_gpu_run(&env);
    daemon_stop(x);
    return rc;
}

/* ---- the registry of scenarios ---- */

struct scenario {
    const char *name;
    int (*fn)(struct ctx *x);
    const char *help;
};

static const struct scenario scenarios[] = {
    {"hit", scen_hit, "batched gathers of resident rows, next to every baseline"},
    {"miss", scen_miss, "cold partition faults (O_DIRECT) at depth 1 and 32, next to fio"},
    {"mixed", scen_mixed, "budget = table/4, Zipf(0.99) batches of 256: hit ratio over time"},
    {"scale", scen_scale, "1..N client processes gathering batches of 256 at once"},
    {"gpu", scen_gpu, "gathers into GPU memory: device tier, mapped host memory, H2D, PyTorch"},
};
#define NSCEN (sizeof(scenarios) / sizeof(scenarios[0]))

/* ---- output ---- */

static const struct result *find(const struct ctx *x, const struct result *like,
                                 const char *system)
{
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = &x->res[i];
        if (r->ok && !strcmp(r->system, system) && !strcmp(r->scenario, like->scenario) &&
            !strcmp(r->dist, like->dist) && r->batch == like->batch &&
            r->qd == like->qd && (r->clients == like->clients || !strcmp(system, "fio")))
            return r;
    }
    return NULL;
}

static void cell(double v, int dec, int w)
{
    if (v < 0 || !isfinite(v))
        fprintf(txt, " %*s", w, "-");
    else
        fprintf(txt, " %*.*f", w, dec, v);
}

static double ratio(double a, double b) { return a > 0 && b > 0 ? a / b : -1; }

static void print_table(const struct ctx *x)
{
    bool any = false;
    for (size_t i = 0; i < x->nres; i++)
        any |= strcmp(x->res[i].scenario, "gpu") != 0;
    if (any) /* the gpu scenario printed its own table */
        fprintf(txt,
                "\n%-6s %-15s %6s %-7s %3s %3s %10s %10s %10s %10s %12s %7s %7s %8s %8s %7s\n",
                "scen", "system", "batch", "dist", "cl", "qd", "p50_us", "p99_us", "p99.9_us",
                "max_us", "rows/s", "GB/s", "p50/ec", "p50/flat", "p99/flat", "GB/fio");
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = &x->res[i];
        if (!strcmp(r->scenario, "gpu")) /* in the gpu scenario's own table */
            continue;
        const struct result *ec = find(x, r, "embcache"), *fl = find(x, r, "flat"),
                            *fi = find(x, r, "fio");
        fprintf(txt, "%-6s %-15s %6" PRIu64 " %-7s %3" PRIu64 " %3" PRIu64, r->scenario,
                r->system, r->batch, r->dist, r->clients, r->qd);
        cell(r->p50, 2, 10);
        cell(r->p99, 2, 10);
        cell(r->p999, 2, 10);
        cell(r->max, 1, 10);
        cell(r->rows_s, 0, 12);
        cell(r->gbps, 2, 7);
        cell(ec && r->ok ? ratio(r->p50, ec->p50) : -1, 2, 7);
        cell(fl && r->ok ? ratio(r->p50, fl->p50) : -1, 2, 8);
        cell(fl && r->ok ? ratio(r->p99, fl->p99) : -1, 2, 8);
        cell(fi && r->ok && fi != r ? ratio(r->gbps, fi->gbps) : -1, 2, 7);
        fprintf(txt, "%s\n", r->ok ? "" : "  (failed)");
    }
    for (unsigned i = 0; i < x->nnotes; i++)
        fprintf(txt, "note: %s\n", x->notes[i]);
}

static const struct result *pick(const struct ctx *x, const char *scen, const char *sys,
                                 const char *dist, uint64_t batch, uint64_t clients,
                                 uint64_t qd)
{
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = &x->res[i];
        if (r->ok && !strcmp(r->scenario, scen) && !strcmp(r->system, sys) &&
            (!dist || !strcmp(r->dist, dist)) && (!batch || r->batch == batch) &&
            (!clients || r->clients == clients) && (!qd || r->qd == qd))
            return r;
    }
    return NULL;
}

static void goal(const char *what, double v, double limit, bool le)
{
    if (v < 0) {
        fprintf(txt, "goal %-58s measured      -  (not run)\n", what);
        return;
    }
    bool ok = le ? v <= limit : v >= limit;
    fprintf(txt, "goal %-58s measured %8.2f  %s\n", what, v, ok ? "met" : "MISSED");
}

static void print_goals(const struct ctx *x)
{
    bool any = false;
    for (size_t i = 0; i < x->nres; i++)
        any |= strcmp(x->res[i].scenario, "gpu") != 0;
    if (!any) /* the gpu scenario printed its own */
        return;
    fprintf(txt, "\nissue 4 goals (hit: batch 256, uniform ids, one client):\n");
    const struct result *ec = pick(x, "hit", "embcache", "uniform", 256, 1, 1),
                        *fl = pick(x, "hit", "flat", "uniform", 256, 1, 1),
                        *rm = pick(x, "hit", "redis-mget", "uniform", 256, 1, 1),
                        *rp = pick(x, "hit", "redis-pipeline", "uniform", 256, 1, 1),
                        *mc = pick(x, "hit", "memcached", "uniform", 256, 1, 1);
    goal("hit p50 embcache / flat (<= 1.2)", ec && fl ? ratio(ec->p50, fl->p50) : -1, 1.2, true);
    goal("hit p99 embcache / flat (<= 1.5)", ec && fl ? ratio(ec->p99, fl->p99) : -1, 1.5, true);
    goal("hit p50 redis-mget / embcache (>= 15)", ec && rm ? ratio(rm->p50, ec->p50) : -1, 15, false);
    goal("hit p99 redis-mget / embcache (>= 15)", ec && rm ? ratio(rm->p99, ec->p99) : -1, 15, false);
    goal("hit p50 redis-pipeline / embcache (>= 15)", ec && rp ? ratio(rp->p50, ec->p50) : -1, 15, false);
    goal("hit p50 memcached / embcache (>= 15)", ec && mc ? ratio(mc->p50, ec->p50) : -1, 15, false);
    goal("hit p99 memcached / embcache (>= 15)", ec && mc ? ratio(mc->p99, ec->p99) : -1, 15, false);
    goal("hit Mrows/s on one core (>= 8)", ec ? ec->rows_s / 1e6 : -1, 8, false);
    goal("hit p99.9 / p50 (<= 3)", ec ? ratio(ec->p999, ec->p50) : -1, 3, true);
    const struct result *s1 = pick(x, "scale", "embcache", NULL, 0, 1, 0),
                        *s2 = pick(x, "scale", "embcache", NULL, 0, 2, 0);
    goal("scale rows/s 2 clients / 1 client (>= 1.8)", s1 && s2 ? ratio(s2->rows_s, s1->rows_s) : -1,
         1.8, false);
    const struct result *m1 = pick(x, "miss", "embcache", NULL, 0, 1, 1),
                        *f1 = pick(x, "miss", "fio", NULL, 0, 0, 1),
                        *m32 = pick(x, "miss", "embcache", NULL, 0, 32, 32),
                        *f32 = pick(x, "miss", "fio", NULL, 0, 0, 32);
    goal("miss GB/s embcache / fio, depth 1 (>= 0.9)", m1 && f1 ? ratio(m1->gbps, f1->gbps) : -1,
         0.9, false);
    goal("miss p99 embcache / fio, depth 1 (<= 1.2)", m1 && f1 ? ratio(m1->p99, f1->p99) : -1,
         1.2, true);
    goal("miss GB/s embcache / fio, depth 32 (>= 0.9)",
         m32 && f32 ? ratio(m32->gbps, f32->gbps) : -1, 0.9, false);
    goal("miss p99 embcache / fio, depth 32 (<= 1.2)", m32 && f32 ? ratio(m32->p99, f32->p99) : -1,
         1.2, true);
}

static void jnum(FILE *f, const char *k, double v)
{
    if (v < 0 || !isfinite(v))
        fprintf(f, ",\"%s\":null", k);
    else
        fprintf(f, ",\"%s\":%.6g", k, v);
}

static void write_json(const struct ctx *x, FILE *f)
{
    fprintf(f, "[\n");
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = &x->res[i];
        fprintf(f, "  {\"bench\":\"embcache-bench\",\"version\":\"%s\",\"scenario\":", ec_version());
        bu_json_str(f, r->scenario);
        fprintf(f, ",\"system\":");
        bu_json_str(f, r->system);
        fprintf(f, ",\"dtype\":\"%s\",\"rows\":%" PRIu64 ",\"dim\":%" PRIu64
                   ",\"row_bytes\":%" PRIu64 ",\"batch\":%" PRIu64 ",\"dist\":\"%s\""
                   ",\"clients\":%" PRIu64 ",\"qd\":%" PRIu64 ",\"seed\":%" PRIu64
                   ",\"seconds\":%.3f,\"calls\":%" PRIu64 ",\"rows_done\":%" PRIu64,
                r->dtype, r->table_rows, r->dim, r->row_bytes, r->batch, r->dist,
                r->clients, r->qd, x->o.seed, r->secs, r->calls, r->rows_done);
        jnum(f, "p50_us", r->p50);
        jnum(f, "p90_us", r->p90);
        jnum(f, "p99_us", r->p99);
        jnum(f, "p999_us", r->p999);
        jnum(f, "max_us", r->max);
        jnum(f, "rows_per_s", r->rows_s);
        jnum(f, "gbps", r->gbps);
        jnum(f, "hit_ratio", r->hit_ratio);
        fprintf(f, ",\"verified_rows\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"ok\":%s,\"note\":",
                r->verified, r->mismatches, r->ok ? "true" : "false");
        bu_json_str(f, r->note);
        fprintf(f, "}%s\n", i + 1 < x->nres ? "," : "");
    }
    fprintf(f, "]\n");
}

static void csvnum(FILE *f, double v)
{
    if (v < 0 || !isfinite(v))
        fprintf(f, ",");
    else
        fprintf(f, ",%.6g", v);
}

static void write_csv(const struct ctx *x, FILE *f)
{
    fprintf(f, "scenario,system,dtype,rows,dim,row_bytes,batch,dist,clients,qd,seconds,calls,"
               "rows_done,p50_us,p90_us,p99_us,p999_us,max_us,rows_per_s,gbps,hit_ratio,"
               "verified_rows,mismatches,ok,note\n");
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = &x->res[i];
        fprintf(f, "%s,%s,%s,%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%s,%" PRIu64
                   ",%" PRIu64 ",%.3f,%" PRIu64 ",%" PRIu64,
                r->scenario, r->system, r->dtype, r->table_rows, r->dim, r->row_bytes,
                r->batch, r->dist, r->clients, r->qd, r->secs, r->calls, r->rows_done);
        csvnum(f, r->p50);
        csvnum(f, r->p90);
        csvnum(f, r->p99);
        csvnum(f, r->p999);
        csvnum(f, r->max);
        csvnum(f, r->rows_s);
        csvnum(f, r->gbps);
        csvnum(f, r->hit_ratio);
        fprintf(f, ",%" PRIu64 ",%" PRIu64 ",%d,\"", r->verified, r->mismatches, r->ok);
        for (const char *p = r->note; *p; p++)
            fputs(*p == '"' ? "\"\"" : (char[2]){*p, 0}, f);
        fprintf(f, "\"\n");
    }
}

/* ---- plots ---- */

static void cdf_point(double ns, double frac, void *arg)
{
    fprintf(arg, "%.4f %.6f\n", ns / 1e3, frac);
}

static int run_gnuplot(const char *script)
{
    char *argv[] = {(char *)"gnuplot", (char *)script, NULL};
    int st;
    char *o = bu_run_capture(argv, &st);
    free(o);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void write_plots(struct ctx *x)
{
    char path[PATH_MAX + 64], gp[PATH_MAX + 64];
    int st;
    char *argv[] = {(char *)"gnuplot", (char *)"--version", NULL};
    char *v = bu_run_capture(argv, &st);
    unsigned pngs = 0;
    bool have = v && WIFEXITED(st) && WEXITSTATUS(st) == 0;

    free(v);
    if (!have) {
        note(x, "--plot: gnuplot not installed (apt-get install gnuplot-nox): no plots");
        return;
    }
    mkdir(x->o.plot_dir, 0755);
    /* latency CDFs: one plot per (scenario, batch, dist, clients), one line per system */
    for (size_t i = 0; i < x->nres; i++) {
        const struct result *r = &x->res[i];
        bool first = true;
        if (!r->h || !r->h->count)
            continue;
        for (size_t j = 0; j < i; j++) /* drawn with an earlier result of its group */
            if (x->res[j].h && !strcmp(x->res[j].scenario, r->scenario) &&
                x->res[j].batch == r->batch && !strcmp(x->res[j].dist, r->dist) &&
                x->res[j].clients == r->clients && x->res[j].qd == r->qd &&
                x->res[j].dim == r->dim && !strcmp(x->res[j].dtype, r->dtype))
                first = false;
        if (!first)
            continue;
        char stem[160];
        if (!strcmp(r->scenario, "gpu")) /* one table per dtype and width */
            snprintf(stem, sizeof(stem), "cdf-gpu-%s-d%" PRIu64 "-b%" PRIu64, r->dtype, r->dim,
                     r->batch);
        else
            snprintf(stem, sizeof(stem), "cdf-%s-b%" PRIu64 "-%s-c%" PRIu64 "-qd%" PRIu64,
                     r->scenario, r->batch, r->dist, r->clients, r->qd);
        snprintf(gp, sizeof(gp), "%s/%s.gp", x->o.plot_dir, stem);
        FILE *g = fopen(gp, "w");
        if (!g)
            continue;
        fprintf(g, "set terminal png size 900,560\nset output '%s/%s.png'\n"
                   "set title 'latency CDF: %s, %s x %" PRIu64 ", batch %" PRIu64
                   ", %s ids, %" PRIu64 " client(s)'\nset logscale x\n"
                   "set xlabel 'latency per call (us)'\n"
                   "set ylabel 'fraction of calls'\nset key bottom right\nset grid\nplot ",
                x->o.plot_dir, stem, r->scenario, r->dtype, r->dim, r->batch, r->dist,
                r->clients);
        bool any = false;
        for (size_t j = i; j < x->nres; j++) {
            const struct result *q = &x->res[j];
            if (!q->h || !q->h->count || strcmp(q->scenario, r->scenario) ||
                q->batch != r->batch || strcmp(q->dist, r->dist) || q->clients != r->clients ||
                q->qd != r->qd || q->dim != r->dim || strcmp(q->dtype, r->dtype))
                continue;
            snprintf(path, sizeof(path), "%s/%s-%s.dat", x->o.plot_dir, stem, q->system);
            FILE *d = fopen(path, "w");
            if (!d)
                continue;
            bu_hist_cdf(q->h, cdf_point, d);
            fclose(d);
            fprintf(g, "%s'%s' using 1:2 with lines lw 2 title '%s'", any ? ", " : "", path,
                    q->system);
            any = true;
        }
        fprintf(g, "\n");
        fclose(g);
        if (any && run_gnuplot(gp) == 0)
            pngs++;
    }
    /* throughput vs batch size, hit, per dist */
    for (unsigned d = 0; d < x->o.ndist; d++) {
        char stem[64];
        snprintf(stem, sizeof(stem), "tput-hit-%s", x->o.dist[d]);
        snprintf(gp, sizeof(gp), "%s/%s.gp", x->o.plot_dir, stem);
        FILE *g = fopen(gp, "w");
        bool any = false;
        if (!g)
            continue;
        fprintf(g, "set terminal png size 900,560\nset output '%s/%s.png'\n"
                   "set title 'hit: rows/s vs batch size, %s ids, one client'\n"
                   "set logscale xy\nset xlabel 'batch size (rows)'\nset ylabel 'rows/s'\n"
                   "set key bottom right\nset grid\nplot ",
                x->o.plot_dir, stem, x->o.dist[d]);
        const char *systems[8];
        unsigned ns = 0;
        for (size_t i = 0; i < x->nres; i++) {
            const struct result *r = &x->res[i];
            bool seen = false;
            if (strcmp(r->scenario, "hit") || strcmp(r->dist, x->o.dist[d]) || !r->ok)
                continue;
            for (unsigned k = 0; k < ns; k++)
                seen |= !strcmp(systems[k], r->system);
            if (!seen && ns < 8)
                systems[ns++] = r->system;
        }
        for (unsigned k = 0; k < ns; k++) {
            snprintf(path, sizeof(path), "%s/%s-%s.dat", x->o.plot_dir, stem, systems[k]);
            FILE *f = fopen(path, "w");
            if (!f)
                continue;
            for (size_t i = 0; i < x->nres; i++) {
                const struct result *r = &x->res[i];
                if (!strcmp(r->scenario, "hit") && !strcmp(r->dist, x->o.dist[d]) && r->ok &&
                    !strcmp(r->system, systems[k]))
                    fprintf(f, "%" PRIu64 " %.0f\n", r->batch, r->rows_s);
            }
            fclose(f);
            fprintf(g, "%s'%s' using 1:2 with linespoints lw 2 title '%s'", any ? ", " : "",
                    path, systems[k]);
            any = true;
        }
        fprintf(g, "\n");
        fclose(g);
        if (any && run_gnuplot(gp) == 0)
            pngs++;
        else if (!any)
            unlink(gp);
    }
    fprintf(stderr, "embcache-bench: %u plots in %s\n", pngs, x->o.plot_dir);
}

/* ---- --check-json ---- */

static int check_json(const char *path)
{
    static const char *const keys[] = {
        "scenario", "system", "dtype", "rows", "dim", "row_bytes", "batch", "dist", "clients",
        "qd", "seconds", "calls", "rows_done", "p50_us", "p90_us", "p99_us", "p999_us",
        "max_us", "rows_per_s", "gbps", "hit_ratio", "verified_rows", "mismatches", "ok",
        "note"};
    FILE *f = fopen(path, "r");
    char *buf;
    long len;
    int bad = 0, n = 0;
    bool seen_scen[NSCEN] = {false};

    if (!f) {
        fprintf(stderr, "embcache-bench: --check-json: cannot open %s: %s\n", path,
                strerror(errno));
        return 1;
    }
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = calloc(1, (size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) {
        fclose(f);
        free(buf);
        return 1;
    }
    fclose(f);
    const char *p = buf;
    while (*p == ' ' || *p == '\n')
        p++;
    if (*p != '[' || !strrchr(p, ']')) {
        fprintf(stderr, "check-json: not a JSON array\n");
        free(buf);
        return 1;
    }
    for (const char *o = strchr(p, '{'); o; o = strchr(o + 1, '{')) {
        const char *e = strchr(o, '}');
        char obj[4096], sys[32] = "", scen[32] = "";
        if (!e || (size_t)(e - o) >= sizeof(obj)) {
            fprintf(stderr, "check-json: object %d is not closed\n", n);
            bad = 1;
            break;
        }
        memcpy(obj, o, (size_t)(e - o + 1));
        obj[e - o + 1] = '\0';
        n++;
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            char pat[64];
            snprintf(pat, sizeof(pat), "\"%s\":", keys[k]);
            if (!strstr(obj, pat)) {
                fprintf(stderr, "check-json: object %d lacks \"%s\"\n", n, keys[k]);
                bad = 1;
            }
        }
        const char *s = strstr(obj, "\"system\":\"");
        if (s)
            sscanf(s + 10, "%31[^\"]", sys);
        s = strstr(obj, "\"scenario\":\"");
        if (s)
            sscanf(s + 12, "%31[^\"]", scen);
        for (size_t k = 0; k < NSCEN; k++)
            if (!strcmp(scen, scenarios[k].name))
                seen_scen[k] = true;
        double mm = -1, ver = -1;
        bu_json_num(obj, obj + strlen(obj), "mismatches", &mm);
        bu_json_num(obj, obj + strlen(obj), "verified_rows", &ver);
        if (mm != 0) {
            fprintf(stderr, "check-json: %s/%s: %g rows differ from the source\n", scen, sys, mm);
            bad = 1;
        }
        /* fio and the H2D copies move bytes, not rows: nothing to verify */
        if (strcmp(sys, "fio") && strncmp(sys, "h2d-", 4) && ver <= 0 &&
            !strstr(obj, "\"ok\":false")) {
            fprintf(stderr, "check-json: %s/%s verified no rows\n", scen, sys);
            bad = 1;
        }
        if (!strstr(obj, "\"ok\":true")) {
            fprintf(stderr, "check-json: %s/%s did not succeed\n", scen, sys);
            bad = 1;
        }
        o = e;
    }
    /* Every scenario of the default set ran; gpu needs a GPU and may be
     * absent, but a file of only gpu results is whole. */
    bool gpu_only = true;
    for (size_t k = 0; k < NSCEN; k++)
        if (strcmp(scenarios[k].name, "gpu") && seen_scen[k])
            gpu_only = false;
    for (size_t k = 0; k < NSCEN; k++)
        if (!seen_scen[k] && strcmp(scenarios[k].name, "gpu") && !gpu_only) {
            fprintf(stderr, "check-json: no result of scenario %s\n", scenarios[k].name);
            bad = 1;
        }
    if (!gpu_only &&
        (!strstr(buf, "\"system\":\"flat\"") || !strstr(buf, "\"system\":\"hashmap\""))) {
        fprintf(stderr, "check-json: the flat and hashmap floors are missing\n");
        bad = 1;
    }
    free(buf);
    fprintf(stderr, "check-json: %s: %d results, %s\n", path, n, bad ? "BAD" : "ok");
    return bad || n == 0;
}

/* ---- options ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: embcache-bench [--socket PATH | --start-daemon] [--embcached PATH]\n"
            "         [--data-dir DIR] [--rows N] [--dim D] [--dtype f32|f16|f64|i8|u8|i32|i64]\n"
            "         [--scenario LIST] [--batch 1,16,256,4096] [--dist uniform,zipf]\n"
            "         [--seconds S] [--clients 1,2,4,8] [--budget BYTES]\n"
            "         [--baselines flat,hashmap,redis-mget,redis-pipeline,memcached|all|none]\n"
            "         [--json[=FILE]] [--csv[=FILE]] [--plot DIR] [--seed S] [--quick]\n"
            "         [--gpu-batch 1,4,..,65536] [--gpu-dims 64,256,1024,4096]\n"
            "         [--gpu-dtypes f32,f16] [--gpu-table-mib 256] [--gpu-device N]\n"
            "         [--gpu-python PATH] [--gpu-torch gpu_torch_baseline.py|none]\n"
            "       embcache-bench --check-json FILE\n"
            "scenarios:\n");
    for (size_t i = 0; i < NSCEN; i++)
        fprintf(f, "  %-6s %s\n", scenarios[i].name, scenarios[i].help);
    fprintf(f, "Without --socket it starts its own embcached (next to this program, or\n"
               "--embcached PATH) on a temporary data directory and socket.\n");
}

static uint64_t parse_u64(const char *what, const char *s)
{
    uint64_t v;
    if (ec_parse_size(s, &v)) {
        fprintf(stderr, "embcache-bench: %s '%s' is not a number\n", what, s);
        exit(2);
    }
    return v;
}

static unsigned parse_list(const char *what, const char *s, uint64_t *out)
{
    char buf[256], *save = NULL;
    unsigned n = 0;

    snprintf(buf, sizeof(buf), "%s", s);
    for (char *t = strtok_r(buf, ",", &save); t && n < MAX_LIST; t = strtok_r(NULL, ",", &save)) {
        out[n] = parse_u64(what, t);
        if (out[n] == 0) {
            fprintf(stderr, "embcache-bench: %s must be positive\n", what);
            exit(2);
        }
        n++;
    }
    return n;
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    enum { O_SOCKET = 256, O_START, O_DATA, O_ROWS, O_DIM, O_DTYPE, O_SCEN, O_BATCH, O_DIST,
           O_SECS, O_CLIENTS, O_BUDGET, O_BASE, O_JSON, O_CSV, O_PLOT, O_SEED, O_QUICK,
           O_EMBCACHED, O_CHECK, O_HELP, O_GPU_BATCH, O_GPU_DIMS, O_GPU_DTYPES, O_GPU_MIB,
           O_GPU_DEVICE, O_GPU_PYTHON, O_GPU_TORCH };
    static const struct option lo[] = {
        {"socket", required_argument, NULL, O_SOCKET},
        {"start-daemon", no_argument, NULL, O_START},
        {"embcached", required_argument, NULL, O_EMBCACHED},
        {"data-dir", required_argument, NULL, O_DATA},
        {"rows", required_argument, NULL, O_ROWS},
        {"dim", required_argument, NULL, O_DIM},
        {"dtype", required_argument, NULL, O_DTYPE},
        {"scenario", required_argument, NULL, O_SCEN},
        {"batch", required_argument, NULL, O_BATCH},
        {"dist", required_argument, NULL, O_DIST},
        {"seconds", required_argument, NULL, O_SECS},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"budget", required_argument, NULL, O_BUDGET},
        {"baselines", required_argument, NULL, O_BASE},
        {"json", optional_argument, NULL, O_JSON},
        {"csv", optional_argument, NULL, O_CSV},
        {"plot", required_argument, NULL, O_PLOT},
        {"seed", required_argument, NULL, O_SEED},
        {"quick", no_argument, NULL, O_QUICK},
        {"check-json", required_argument, NULL, O_CHECK},
        {"gpu-batch", required_argument, NULL, O_GPU_BATCH},
        {"gpu-dims", required_argument, NULL, O_GPU_DIMS},
        {"gpu-dtypes", required_argument, NULL, O_GPU_DTYPES},
        {"gpu-table-mib", required_argument, NULL, O_GPU_MIB},
        {"gpu-device", required_argument, NULL, O_GPU_DEVICE},
        {"gpu-python", required_argument, NULL, O_GPU_PYTHON},
        {"gpu-torch", required_argument, NULL, O_GPU_TORCH},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    const char *scen = "hit,miss,mixed,scale", *batch = "1,16,256,4096", *dist = "uniform,zipf",
               *clients = "1,2,4,8", *base = "all",
               *gpu_batch = "1,4,16,64,256,1024,4096,16384,65536", *gpu_dims = "64,256,1024,4096",
               *gpu_dtypes = "f32,f16";
    uint64_t gpu_mib = 0;
    double secs = -1;
    int ch;

    o->rows = 1000000;
    o->dim = 128;
    o->dtype_name = "f32";
    o->seed = 42;
    o->start_daemon = true;
    o->gpu_python = "python3";
    o->gpu_torch = EC_BENCH_SOURCE_DIR "/gpu_torch_baseline.py";
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case O_SOCKET: o->socket = optarg; o->start_daemon = false; break;
        case O_START: o->start_daemon = true; break;
        case O_EMBCACHED: o->embcached = optarg; break;
        case O_DATA: o->data_dir = optarg; break;
        case O_ROWS: o->rows = parse_u64("--rows", optarg); break;
        case O_DIM: o->dim = parse_u64("--dim", optarg); break;
        case O_DTYPE: o->dtype_name = optarg; break;
        case O_SCEN: scen = optarg; break;
        case O_BATCH: batch = optarg; break;
        case O_DIST: dist = optarg; break;
        case O_SECS:
            secs = strtod(optarg, NULL);
            if (!(secs > 0 && secs <= 3600)) {
                fprintf(stderr, "embcache-bench: --seconds must be in (0, 3600]\n");
                exit(2);
            }
            break;
        case O_CLIENTS: clients = optarg; break;
        case O_BUDGET:
            if (ec_parse_size(optarg, &o->budget) || !o->budget) {
                fprintf(stderr, "embcache-bench: --budget '%s' is not a size\n", optarg);
                exit(2);
            }
            break;
        case O_BASE: base = optarg; break;
        case O_JSON: o->json = true; o->json_path = optarg; break;
        case O_CSV: o->csv = true; o->csv_path = optarg; break;
        case O_PLOT: o->plot_dir = optarg; break;
        case O_SEED: o->seed = parse_u64("--seed", optarg); break;
        case O_QUICK: o->quick = true; break;
        case O_CHECK: o->check_json = optarg; break;
        case O_GPU_BATCH: gpu_batch = optarg; break;
        case O_GPU_DIMS: gpu_dims = optarg; break;
        case O_GPU_DTYPES: gpu_dtypes = optarg; break;
        case O_GPU_MIB: gpu_mib = parse_u64("--gpu-table-mib", optarg); break;
        case O_GPU_DEVICE: o->gpu_device = (int)parse_u64("--gpu-device", optarg); break;
        case O_GPU_PYTHON: o->gpu_python = optarg; break;
        case O_GPU_TORCH: o->gpu_torch = strcmp(optarg, "none") ? optarg : NULL; break;
        case 'h': case O_HELP: usage(stdout); exit(0);
        default: usage(stderr); exit(2);
        }
    }
    if (optind < argc) {
        fprintf(stderr, "embcache-bench: unexpected argument '%s'\n", argv[optind]);
        exit(2);
    }
    if (o->check_json)
        return;
    o->seconds = secs > 0 ? secs : o->quick ? 0.3 : 2.0;
    o->dtype = EC_DTYPE_INVALID;
    for (int d = 1; d <= 8; d++)
        if (ec_dtype_name((ec_dtype)d) && !strcmp(ec_dtype_name((ec_dtype)d), o->dtype_name))
            o->dtype = (ec_dtype)d;
    if (o->dtype == EC_DTYPE_INVALID || !npy_descr(o->dtype)) {
        fprintf(stderr, "embcache-bench: --dtype '%s': use f32, f16, f64, i8, u8, i32 or i64 "
                        "(bf16 has no .npy form)\n", o->dtype_name);
        exit(2);
    }
    if (o->rows == 0 || o->dim == 0 || o->dim > 1048576) {
        fprintf(stderr, "embcache-bench: --rows must be positive and --dim in 1..1048576\n");
        exit(2);
    }
    /* scenarios: unknown names are reported, the others still run */
    {
        char buf[256], *save = NULL;
        snprintf(buf, sizeof(buf), "%s", scen);
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            bool known = false;
            for (size_t i = 0; i < NSCEN; i++)
                known |= !strcmp(t, scenarios[i].name);
            if (!known) {
                fprintf(stderr, "embcache-bench: unknown scenario '%s'; valid scenarios:", t);
                for (size_t i = 0; i < NSCEN; i++)
                    fprintf(stderr, " %s", scenarios[i].name);
                fprintf(stderr, " (the others still run)\n");
                continue;
            }
            if (o->nscen < MAX_LIST)
                snprintf(o->scen[o->nscen++], sizeof(o->scen[0]), "%s", t);
        }
    }
    o->nbatch = parse_list("--batch", batch, o->batch);
    o->ngpu_batch = parse_list("--gpu-batch", gpu_batch, o->gpu_batch);
    o->ngpu_dims = parse_list("--gpu-dims", gpu_dims, o->gpu_dims);
    o->gpu_table_mib = gpu_mib ? gpu_mib : o->quick ? 32 : 256;
    for (unsigned i = 0; i < o->ngpu_dims; i++)
        if (o->gpu_dims[i] > 1048576) {
            fprintf(stderr, "embcache-bench: --gpu-dims: at most 1048576 elements\n");
            exit(2);
        }
    {
        char buf[64], *save = NULL;
        snprintf(buf, sizeof(buf), "%s", gpu_dtypes);
        for (char *t = strtok_r(buf, ",", &save); t && o->ngpu_dtypes < 4;
             t = strtok_r(NULL, ",", &save)) {
            if (strcmp(t, "f32") && strcmp(t, "f16")) {
                fprintf(stderr, "embcache-bench: --gpu-dtypes '%s': use f32 and/or f16\n", t);
                exit(2);
            }
            snprintf(o->gpu_dtype_buf[o->ngpu_dtypes], sizeof(o->gpu_dtype_buf[0]), "%s", t);
            o->gpu_dtypes[o->ngpu_dtypes] = o->gpu_dtype_buf[o->ngpu_dtypes];
            o->ngpu_dtypes++;
        }
    }
    o->nclients = parse_list("--clients", clients, o->clients);
    for (unsigned i = 0; i < o->nclients; i++)
        if (o->clients[i] > 64) {
            fprintf(stderr, "embcache-bench: --clients: at most 64 processes\n");
            exit(2);
        }
    {
        char buf[64], *save = NULL;
        snprintf(buf, sizeof(buf), "%s", dist);
        for (char *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
            if (strcmp(t, "uniform") && strcmp(t, "zipf")) {
                fprintf(stderr, "embcache-bench: --dist '%s': use uniform and/or zipf\n", t);
                exit(2);
            }
            if (o->ndist < 2)
                snprintf(o->dist[o->ndist++], sizeof(o->dist[0]), "%s", t);
        }
    }
    if (!strcmp(base, "all")) {
        static const char *const allb[] = {"flat", "hashmap", "redis-mget", "redis-pipeline",
                                           "memcached"};
        for (unsigned i = 0; i < 5; i++)
            snprintf(o->base[o->nbase++], sizeof(o->base[0]), "%s", allb[i]);
    } else if (strcmp(base, "none")) {
        char buf[256], *save = NULL;
        snprintf(buf, sizeof(buf), "%s", base);
        for (char *t = strtok_r(buf, ",", &save); t && o->nbase < 8;
             t = strtok_r(NULL, ",", &save)) {
            if (strcmp(t, "flat") && strcmp(t, "hashmap") && strcmp(t, "redis-mget") &&
                strcmp(t, "redis-pipeline") && strcmp(t, "memcached")) {
                fprintf(stderr, "embcache-bench: unknown baseline '%s'; valid: flat, hashmap, "
                                "redis-mget, redis-pipeline, memcached, all, none\n", t);
                exit(2);
            }
            snprintf(o->base[o->nbase++], sizeof(o->base[0]), "%s", t);
        }
    }
}

/* Refuse a table that cannot fit before doing anything. */
static int check_sizes(struct ctx *x)
{
    struct statvfs sv;
    uint64_t need;

    if (x->o.rows > UINT64_MAX / x->row_bytes) {
        fprintf(stderr, "embcache-bench: %" PRIu64 " x %" PRIu64 " rows overflow\n", x->o.rows,
                x->o.dim);
        return -1;
    }
    /* the .npy (deleted after import) and the partition file */
    need = 2 * x->table_bytes + (64u << 20);
    if (statvfs(x->tmp, &sv) == 0 && (uint64_t)sv.f_bavail * sv.f_frsize < need) {
        fprintf(stderr, "embcache-bench: the table needs %.1f GiB of disk under %s "
                        "(the .npy and its partition file) but only %.1f GiB is free: "
                        "use fewer --rows or a smaller --dim, or set TMPDIR\n",
                (double)need / 1073741824.0, x->tmp,
                (double)sv.f_bavail * (double)sv.f_frsize / 1073741824.0);
        return -1;
    }
    if (x->o.start_daemon && statvfs("/dev/shm", &sv) == 0 &&
        (uint64_t)sv.f_bavail * sv.f_frsize < shm_size_for(x)) {
        fprintf(stderr, "embcache-bench: the segment needs %.1f GiB of /dev/shm but only "
                        "%.1f GiB is free: use fewer --rows or a smaller --dim\n",
                (double)shm_size_for(x) / 1073741824.0,
                (double)sv.f_bavail * (double)sv.f_frsize / 1073741824.0);
        return -1;
    }
    long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
    if (pages > 0 && psz > 0 && x->table_bytes > (uint64_t)pages * (uint64_t)psz) {
        fprintf(stderr, "embcache-bench: the table (%.1f GiB) is larger than free memory "
                        "(%.1f GiB): use fewer --rows\n", (double)x->table_bytes / 1073741824.0,
                (double)pages * (double)psz / 1073741824.0);
        return -1;
    }
    return 0;
}

static void find_embcached(struct ctx *x)
{
    static char path[PATH_MAX];
    char self[PATH_MAX];
    ssize_t n;

    if (x->o.embcached)
        return;
    n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (n > 0) {
        self[n] = '\0';
        char *slash = strrchr(self, '/');
        if (slash) {
            *slash = '\0';
            if (snprintf(path, sizeof(path), "%s/../embcached", self) < (int)sizeof(path) &&
                access(path, X_OK) == 0) {
                x->o.embcached = path;
                return;
            }
            if (snprintf(path, sizeof(path), "%s/embcached", self) < (int)sizeof(path) &&
                access(path, X_OK) == 0) {
                x->o.embcached = path;
                return;
            }
        }
    }
    x->o.embcached = "embcached";
}

int main(int argc, char **argv)
{
    static struct ctx x;
    struct sigaction sa;
    FILE *jf = NULL, *cf = NULL;
    int rc = 0;

    bool need_table = false;

    parse_args(argc, argv, &x.o);
    if (x.o.check_json)
        return check_json(x.o.check_json);
    txt = ((x.o.json && !x.o.json_path) || (x.o.csv && !x.o.csv_path)) ? stderr : stdout;
    /* The gpu scenario where it cannot run is said so before anything
     * starts; asked for alone, that is a skipped run (77), as ctest and
     * scripts expect. It brings its own tables: the main one is made only
     * for the other scenarios. */
    for (unsigned i = 0; i < x.o.nscen; i++) {
        char why[256];
        if (strcmp(x.o.scen[i], "gpu")) {
            need_table = true;
            continue;
        }
        if (gpu_runnable(&x.o, why, sizeof(why)))
            continue;
        if (x.o.nscen == 1) {
            printf("gpu scenario skipped: %s\n", why);
            return 77;
        }
        note(&x, "gpu scenario skipped: %s", why);
        memmove(x.o.scen[i], x.o.scen[i + 1], (x.o.nscen - i - 1) * sizeof(x.o.scen[0]));
        x.o.nscen--;
        i--;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    x.row_bytes = x.o.dim * ec_dtype_size(x.o.dtype);
    x.table_bytes = x.o.rows * x.row_bytes;
    find_embcached(&x);
    {
        const char *base = getenv("TMPDIR");
        if (asprintf(&x.tmp, "%s/embcache-bench-XXXXXX", base && *base ? base : "/tmp") < 0 ||
            !mkdtemp(x.tmp)) {
            fprintf(stderr, "embcache-bench: cannot make a temporary directory: %s\n",
                    strerror(errno));
            return 1;
        }
    }
    if (need_table && check_sizes(&x)) {
        rc = 1;
        goto out;
    }
    if (x.o.json && x.o.json_path && !(jf = fopen(x.o.json_path, "w"))) {
        fprintf(stderr, "embcache-bench: cannot write %s: %s\n", x.o.json_path, strerror(errno));
        rc = 2;
        goto out;
    }
    if (x.o.csv && x.o.csv_path && !(cf = fopen(x.o.csv_path, "w"))) {
        fprintf(stderr, "embcache-bench: cannot write %s: %s\n", x.o.csv_path, strerror(errno));
        rc = 2;
        goto out;
    }
    if (x.o.start_daemon) {
        if (x.o.data_dir)
            snprintf(x.data, sizeof(x.data), "%s", x.o.data_dir);
        else
            snprintf(x.data, sizeof(x.data), "%s/data", x.tmp);
        snprintf(x.sock, sizeof(x.sock), "%s/embcached.sock", x.tmp);
        snprintf(x.model, sizeof(x.model), "%s", MODEL);
    } else {
        snprintf(x.sock, sizeof(x.sock), "%s", x.o.socket);
        if (x.o.data_dir)
            snprintf(x.data, sizeof(x.data), "%s", x.o.data_dir);
        snprintf(x.model, sizeof(x.model), "%s-%d", MODEL, (int)getpid());
    }
    snprintf(x.npy, sizeof(x.npy), "%s/" TENSOR ".npy", x.tmp);
    if (!need_table)
        goto run;
    x.src = malloc(x.table_bytes);
    if (!x.src) {
        fprintf(stderr, "embcache-bench: cannot allocate the %" PRIu64 "-byte table\n",
                x.table_bytes);
        rc = 1;
        goto out;
    }
    fprintf(stderr, "embcache-bench: table %" PRIu64 " x %" PRIu64 " %s (%.1f MiB), %s\n",
            x.o.rows, x.o.dim, x.o.dtype_name, (double)x.table_bytes / 1048576.0,
            x.o.start_daemon ? "own daemon" : x.sock);
    if (write_npy(&x)) {
        rc = 1;
        goto out;
    }
    if (x.o.start_daemon) {
        if (daemon_start(&x, 0)) {
            rc = 1;
            goto out;
        }
        if (ec_client_connect(x.sock, &x.c)) {
            fprintf(stderr, "embcache-bench: %s\n", ec_last_error());
            rc = 1;
            goto out;
        }
    } else if (ec_client_connect(x.sock, &x.c)) {
        fprintf(stderr, "embcache-bench: %s\n", ec_last_error());
        rc = 1;
        goto out;
    }
    fprintf(stderr, "embcache-bench: importing\n");
    if (import_table(&x)) {
        rc = 1;
        goto out;
    }
    ec_client_close(x.c);
    x.c = NULL;
    if (connect_resolve(&x)) {
        rc = 1;
        goto out;
    }
    fprintf(stderr, "embcache-bench: %" PRIu64 " partitions of %" PRIu64 " rows\n",
            x.info.partitions, x.info.rows_per_partition);
run:
    for (unsigned i = 0; i < x.o.nscen && !g_stop; i++)
        for (size_t k = 0; k < NSCEN; k++)
            if (!strcmp(x.o.scen[i], scenarios[k].name) && scenarios[k].fn(&x)) {
                note(&x, "scenario %s failed", scenarios[k].name);
                x.failed = 1;
            }
    print_table(&x);
    print_goals(&x);
    if (x.o.json)
        write_json(&x, jf ? jf : stdout);
    if (x.o.csv)
        write_csv(&x, cf ? cf : stdout);
    if (x.o.plot_dir)
        write_plots(&x);
    rc = x.failed ? 1 : 0;
out:
    if (!x.o.start_daemon && x.c) {
        ec_tensor_release(x.t);
        x.t = NULL;
        ec_model_retire(x.c, x.model, 1, 1);
    }
    disconnect(&x);
    daemon_stop(&x);
    if (jf)
        fclose(jf);
    if (cf)
        fclose(cf);
    ec_segment_rmtree(x.tmp); /* the data directory too, unless --data-dir */
    for (size_t i = 0; i < x.nres; i++)
        free(x.res[i].h);
    free(x.res);
    free(x.src);
    free(x.tmp);
    if (g_stop && rc == 0)
        rc = 130;
    return g_stop ? 130 : rc;
}
