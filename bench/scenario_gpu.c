/*
 * scenario_gpu.c - embcache-bench's `gpu` scenario: rows gathered into GPU
 * memory by ec_tensor_gather_ex(), timed next to the limits of the machine
 * and to what PyTorch users do today.
 *
 * For each table dtype (--gpu-dtypes: f32, f16) and row width (--gpu-dims:
 * 64 .. 4096 elements) it generates a table of --gpu-table-mib MiB, imports
 * it into an embcached of its own (through the harness) and gathers
 * uniform random ids at each batch size (--gpu-batch: 1 .. 65536) into
 * device memory:
 *   (a) embcache-dev      the daemon runs its device tier (--gpu-slab); the
 *                         version is prewarmed with EC_PREWARM_DEVICE and
 *                         the daemon's stats polled until every partition
 *                         is on the GPU: the kernel reads the daemon's slab
 *                         (CUDA IPC). embcache-dev-f16: the same from an f32
 *                         table into an f16 output (converted in the kernel);
 *   (a') embcache-dev-gpuids  the same tier with the ids on the GPU, as
 *                         index_select has them: the GPU finds the rows
 *                         itself (cuda/resolve.h), and the call waits for
 *                         that kernel;
 *   (b) embcache-mapped   the daemon runs with --gpu-slab 0: the kernel reads
 *                         the rows over PCIe from the pinned, mapped host
 *                         segment (zero copy);
 *   h2d-pinned            cudaMemcpyAsync of 256 MiB blocks from pinned
 *                         memory: the bandwidth (b) is held against
 *                         (h2d-pageable: the same from pageable memory);
 *   (c) torch-host, (d) torch-device  bench/gpu_torch_baseline.py, run with
 *                         --gpu-python on the same shapes and batch sizes.
 * Each call is timed from the call to the stream's synchronization, one
 * histogram sample per call, after three untimed warm-up calls. The first
 * calls of every configuration (up to 256 MiB of output) fill the output
 * with NaN first, copy it back and compare every row with the source table
 * (for an f16 output: the source converted on the CPU, which is bit-exact
 * with the kernel); the daemon's client_rows_device_tier /
 * client_rows_mapped_host counters say which tier the rows came from. A
 * table with the ratios — (a)/(d) time (goal <= 1.2), (b) GB/s / H2D (goal
 * >= 0.8), speedups over (c) — and the goals end the scenario.
 *
 * Runs on the harness's main thread; one daemon at a time.
 */
#include <cuda_runtime_api.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench/scenario_gpu.h"
#include "common/dtype.h"
#include "embcache.h"

#define TENSOR "emb"
#define VERIFY_BYTES (256ull << 20)  /* output checked per configuration, at most */
#define VERIFY_MAX_CALLS 8
#define H2D_BYTES (256ull << 20)
#define RESIDENT_WAIT_S 300          /* promotion of a table to the device tier */
#define NPY_HEADER 128

/* What the closing table needs of each result. */
struct gres {
    char system[24];
    char dtype[8];
    uint64_t dim, batch;
    double p50, rows_s, gbps;
    bool ok;
};

struct gpu {
    const bench_gpu_env *env;
    cudaStream_t stream;
    char dev_name[256];
    double h2d_gbps; /* pinned; 0 when not measured */
    struct gres *res;
    size_t nres, capres;
    int failed;
    uint64_t max_batch;

    /* the table being measured */
    ec_dtype dtype;
    const char *dtype_name;
    uint64_t dim, rows, row_bytes, table_bytes;
    unsigned char *src;
    char model[64], data[PATH_MAX], sock[PATH_MAX], npy[PATH_MAX + 16];
    ec_client *c;
    ec_tensor *t;
    ec_tensor_info info;
    int64_t *ring;
    int64_t *dring;         /* the same ids in device memory */
    size_t ring_len;
    void *dout;             /* device output, max batch x widest output row */
    unsigned char *check;   /* host copy of it, for verification */
    unsigned char *conv;    /* one converted source row */
};

static void gnote(struct gpu *g, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void gnote(struct gpu *g, const char *fmt, ...)
{
    char buf[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    g->env->note(g->env->h, buf);
}

static bool stopped(const struct gpu *g)
{
    return *g->env->stop != 0;
}

int bench_gpu_probe(int device, char *why, size_t len)
{
    const char *b = getenv("EMBCACHE_BACKEND");
    int n = 0;
    cudaError_t e;

    if (b && *b && strcmp(b, "cuda")) {
        snprintf(why, len, "EMBCACHE_BACKEND=%s: the scenario needs the CUDA backend", b);
        return -1;
    }
    e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        snprintf(why, len, "no usable CUDA driver or GPU: %s", cudaGetErrorString(e));
        return -1;
    }
    if (n == 0) {
        snprintf(why, len, "CUDA found no GPU");
        return -1;
    }
    if (device < 0 || device >= n) {
        snprintf(why, len, "--gpu-device %d: this machine has %d GPU(s)", device, n);
        return -1;
    }
    return 0;
}

/* ---- results ---- */

static const struct gres *gfind(const struct gpu *g, const char *system, const char *dtype,
                                uint64_t dim, uint64_t batch)
{
    for (size_t i = 0; i < g->nres; i++) {
        const struct gres *r = &g->res[i];
        if (r->ok && !strcmp(r->system, system) && !strcmp(r->dtype, dtype) && r->dim == dim &&
            r->batch == batch)
            return r;
    }
    return NULL;
}

static double gratio(double a, double b)
{
    return a > 0 && b > 0 ? a / b : -1;
}

/* Keep what the table needs, add the ratios this result already has
 * partners for to its note, and hand it to the harness. */
static void record(struct gpu *g, bench_gpu_result *r)
{
    struct gres *k;

    if (r->h && r->h->count) {
        r->p50_us = (double)bu_hist_quantile(r->h, 0.50) / 1e3;
        r->p90_us = (double)bu_hist_quantile(r->h, 0.90) / 1e3;
        r->p99_us = (double)bu_hist_quantile(r->h, 0.99) / 1e3;
        r->p999_us = (double)bu_hist_quantile(r->h, 0.999) / 1e3;
        r->max_us = (double)r->h->max / 1e3;
    }
    if (r->dtype && !strncmp(r->system, "embcache-", 9) && r->ok) {
        const struct gres *c = gfind(g, "torch-host", r->dtype, r->dim, r->batch),
                          *d = gfind(g, "torch-device", r->dtype, r->dim, r->batch);
        size_t l = strlen(r->note);
        if (!strcmp(r->system, "embcache-mapped") && g->h2d_gbps > 0)
            l += (size_t)snprintf(r->note + l, sizeof(r->note) - l, "%sof_h2d=%.3f",
                                  l ? " " : "", r->gbps / g->h2d_gbps);
        if (d && l < sizeof(r->note))
            l += (size_t)snprintf(r->note + l, sizeof(r->note) - l, "%stime_vs_torch_device=%.3f",
                                  l ? " " : "", gratio(r->p50_us, d->p50));
        if (c && l < sizeof(r->note))
            snprintf(r->note + l, sizeof(r->note) - l, "%sspeedup_vs_torch_host=%.2f",
                     l ? " " : "", gratio(c->p50, r->p50_us));
    }
    if (g->nres == g->capres) {
        size_t cap = g->capres ? g->capres * 2 : 64;
        struct gres *bigger = realloc(g->res, cap * sizeof(*bigger));
        if (bigger) {
            g->res = bigger;
            g->capres = cap;
        }
    }
    if (g->nres < g->capres) {
        k = &g->res[g->nres++];
        memset(k, 0, sizeof(*k));
        snprintf(k->system, sizeof(k->system), "%s", r->system);
        snprintf(k->dtype, sizeof(k->dtype), "%s", r->dtype ? r->dtype : "-");
        k->dim = r->dim;
        k->batch = r->batch;
        k->p50 = r->p50_us;
        k->rows_s = r->rows_s;
        k->gbps = r->gbps;
        k->ok = r->ok;
    }
    if (!r->ok)
        g->failed = 1;
    g->env->emit(g->env->h, r); /* takes r->h */
    r->h = NULL;
}

static void init_result(bench_gpu_result *r, const char *system)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->system, sizeof(r->system), "%s", system);
    r->p50_us = r->p90_us = r->p99_us = r->p999_us = r->max_us = r->rows_s = r->gbps = -1;
}

/* ---- the H2D limit ---- */

static void measure_copy(struct gpu *g, const char *system, void *host, void *dev, size_t bytes)
{
    bench_gpu_result r;
    uint64_t t0, total = 0;
    cudaError_t e = cudaSuccess;

    init_result(&r, system);
    r.batch = 1;
    r.row_bytes = bytes;
    r.h = calloc(1, sizeof(*r.h));
    if (!r.h) {
        snprintf(r.note, sizeof(r.note), "out of memory");
        record(g, &r);
        return;
    }
    bu_hist_reset(r.h);
    memset(host, 0x5a, bytes); /* fault the pages in before the clock runs */
    for (int i = 0; i < 2 && e == cudaSuccess; i++) /* warm-up */
        if ((e = cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, g->stream)) ==
            cudaSuccess)
            e = cudaStreamSynchronize(g->stream);
    while (e == cudaSuccess && !stopped(g) &&
           (total < (uint64_t)(g->env->seconds * 1e9) || r.calls < 5)) {
        t0 = bu_now_ns();
        e = cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, g->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(g->stream);
        uint64_t dt = bu_now_ns() - t0;
        bu_hist_add(r.h, dt);
        total += dt;
        r.calls++;
    }
    if (e != cudaSuccess) {
        snprintf(r.note, sizeof(r.note), "cudaMemcpyAsync of %zu bytes: %s", bytes,
                 cudaGetErrorString(e));
    } else {
        r.secs = (double)total / 1e9;
        r.rows_done = r.calls;
        r.gbps = (double)bytes * (double)r.calls / (double)total;
        r.rows_s = (double)r.calls / r.secs;
        r.ok = true;
        snprintf(r.note, sizeof(r.note), "cudaMemcpyAsync host to GPU %d (%s), %zu-byte blocks",
                 g->env->device, g->dev_name, bytes);
        if (!strcmp(system, "h2d-pinned"))
            g->h2d_gbps = r.gbps;
    }
    record(g, &r);
}

static void measure_h2d(struct gpu *g)
{
    void *pinned = NULL, *pageable = malloc(H2D_BYTES), *dev = NULL;
    cudaError_t e;

    if (!pageable || (e = cudaMalloc(&dev, H2D_BYTES)) != cudaSuccess ||
        (e = cudaHostAlloc(&pinned, H2D_BYTES, cudaHostAllocDefault)) != cudaSuccess) {
        gnote(g, "gpu: no H2D baseline: cannot allocate 2 x %llu MiB (%s)",
              H2D_BYTES >> 20, pageable ? cudaGetErrorString(e) : "malloc failed");
        g->failed = 1;
    } else {
        measure_copy(g, "h2d-pinned", pinned, dev, H2D_BYTES);
        measure_copy(g, "h2d-pageable", pageable, dev, H2D_BYTES);
    }
    cudaFreeHost(pinned);
    cudaFree(dev);
    free(pageable);
}

/* ---- the PyTorch baseline ---- */

static bool json_str(const char *from, const char *to, const char *key, char *out, size_t len)
{
    char pat[64];
    const char *p;
    size_t n = 0;

    snprintf(pat, sizeof(pat), "\"%s\":", key);
    p = strstr(from, pat);
    if (!p || p >= to)
        return false;
    p += strlen(pat);
    while (*p == ' ')
        p++;
    if (*p++ != '"')
        return false;
    while (*p && *p != '"' && p < to && n + 1 < len)
        out[n++] = *p++;
    out[n] = '\0';
    return true;
}

static double json_num_or(const char *from, const char *to, const char *key, double dflt)
{
    double v;
    return bu_json_num(from, to, key, &v) ? v : dflt;
}

/* (c) and (d). A baseline that cannot run (no python, no torch, no GPU in
 * torch) is a note, not a failure of the scenario; rows it read back wrong
 * make its results not ok, as for any system. */
static void run_torch(struct gpu *g)
{
    const bench_gpu_env *env = g->env;
    char dims[256] = "", dtypes[64] = "", batches[256] = "", mib[32], secs[32], dev[16],
         seed[32], out[PATH_MAX];
    char *argv[24], *doc = NULL;
    int argc = 0, st;
    pid_t pid;
    FILE *f;
    long len;

    for (unsigned i = 0, n = 0; i < env->ndims; i++)
        n += (unsigned)snprintf(dims + n, sizeof(dims) - n, "%s%" PRIu64, i ? "," : "",
                                env->dims[i]);
    for (unsigned i = 0, n = 0; i < env->ndtypes; i++)
        n += (unsigned)snprintf(dtypes + n, sizeof(dtypes) - n, "%s%s", i ? "," : "",
                                env->dtypes[i]);
    for (unsigned i = 0, n = 0; i < env->nbatch; i++)
        n += (unsigned)snprintf(batches + n, sizeof(batches) - n, "%s%" PRIu64, i ? "," : "",
                                env->batch[i]);
    snprintf(mib, sizeof(mib), "%" PRIu64, env->table_mib);
    snprintf(secs, sizeof(secs), "%g", env->seconds);
    snprintf(dev, sizeof(dev), "%d", env->device);
    snprintf(seed, sizeof(seed), "%" PRIu64, env->seed);
    snprintf(out, sizeof(out), "%s/torch-baseline.json", env->tmp);
    argv[argc++] = (char *)env->python;
    argv[argc++] = (char *)env->torch_script;
    argv[argc++] = (char *)"--dims";
    argv[argc++] = dims;
    argv[argc++] = (char *)"--dtypes";
    argv[argc++] = dtypes;
    argv[argc++] = (char *)"--batch";
    argv[argc++] = batches;
    argv[argc++] = (char *)"--table-mib";
    argv[argc++] = mib;
    argv[argc++] = (char *)"--seconds";
    argv[argc++] = secs;
    argv[argc++] = (char *)"--device";
    argv[argc++] = dev;
    argv[argc++] = (char *)"--seed";
    argv[argc++] = seed;
    argv[argc++] = (char *)"--json";
    argv[argc++] = out;
    argv[argc] = NULL;

    fprintf(stderr, "embcache-bench: gpu: PyTorch baseline: %s %s\n", env->python,
            env->torch_script);
    fflush(NULL);
    pid = fork();
    if (pid < 0) {
        gnote(g, "gpu: no PyTorch baseline: fork: %s", strerror(errno));
        return;
    }
    if (pid == 0) { /* its progress goes to our stderr; its results to the file */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, STDOUT_FILENO);
        execvp(argv[0], argv);
        fprintf(stderr, "embcache-bench: cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) {
            st = -1;
            break;
        }
    f = fopen(out, "r");
    if (f && fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) > 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (doc = calloc(1, (size_t)len + 1)) && fread(doc, 1, (size_t)len, f) != (size_t)len) {
        free(doc);
        doc = NULL;
    }
    if (f)
        fclose(f);
    unlink(out);
    if (!doc) {
        gnote(g, "gpu: no PyTorch baseline: %s %s %s (status %d) and left no results",
              env->python, env->torch_script,
              WIFEXITED(st) && WEXITSTATUS(st) == 127 ? "could not be run" : "failed",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        return;
    }
    if (strstr(doc, "\"skipped\"")) {
        char why[300] = "";
        json_str(doc, doc + strlen(doc), "skipped", why, sizeof(why));
        gnote(g, "gpu: no PyTorch baseline (c)/(d): %s (--gpu-python picks the interpreter)",
              why);
        free(doc);
        return;
    }
    for (const char *o = strchr(doc, '{'); o; o = strchr(o + 1, '{')) {
        const char *e = strchr(o, '}');
        char dtype[8] = "", note[200] = "";
        bench_gpu_result r;
        if (!e)
            break;
        init_result(&r, "");
        json_str(o, e, "system", r.system, sizeof(r.system));
        json_str(o, e, "dtype", dtype, sizeof(dtype));
        json_str(o, e, "note", note, sizeof(note));
        for (unsigned i = 0; i < env->ndtypes; i++) /* a string that outlives doc */
            if (!strcmp(dtype, env->dtypes[i]))
                r.dtype = env->dtypes[i];
        r.dim = (uint64_t)json_num_or(o, e, "dim", 0);
        r.rows = (uint64_t)json_num_or(o, e, "rows", 0);
        r.row_bytes = (uint64_t)json_num_or(o, e, "row_bytes", 0);
        r.batch = (uint64_t)json_num_or(o, e, "batch", 0);
        r.secs = json_num_or(o, e, "seconds", 0);
        r.calls = (uint64_t)json_num_or(o, e, "calls", 0);
        r.rows_done = (uint64_t)json_num_or(o, e, "rows_done", 0);
        r.verified = (uint64_t)json_num_or(o, e, "verified_rows", 0);
        r.mismatches = (uint64_t)json_num_or(o, e, "mismatches", 0);
        r.p50_us = json_num_or(o, e, "p50_us", -1);
        r.p90_us = json_num_or(o, e, "p90_us", -1);
        r.p99_us = json_num_or(o, e, "p99_us", -1);
        r.p999_us = json_num_or(o, e, "p999_us", -1);
        r.max_us = json_num_or(o, e, "max_us", -1);
        r.rows_s = json_num_or(o, e, "rows_per_s", -1);
        r.gbps = json_num_or(o, e, "gbps", -1);
        r.ok = strstr(o, "\"ok\": true") && strstr(o, "\"ok\": true") < e && r.dtype &&
               r.mismatches == 0;
        snprintf(r.note, sizeof(r.note), "%s%s(PyTorch%s)", note, note[0] ? " " : "",
                 strcmp(r.system, "torch-host") ? ": index_select on the GPU, ids on the GPU"
                                                : ": table[ids] on the host, then .cuda()");
        record(g, &r);
        o = e;
    }
    free(doc);
    if (!WIFEXITED(st) || (WEXITSTATUS(st) != 0 && WEXITSTATUS(st) != 1))
        gnote(g, "gpu: the PyTorch baseline ended with status %d; its results may be partial",
              WIFEXITED(st) ? WEXITSTATUS(st) : -1);
}

/* ---- a table in a daemon ---- */

static uint64_t mix64(uint64_t v)
{
    v += 0x9e3779b97f4a7c15ULL;
    v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ULL;
    v = (v ^ (v >> 27)) * 0x94d049bb133111ebULL;
    return v ^ (v >> 31);
}

/* Values in [-0.5, 0.5) with 20 significant bits: exact in f32, rounded
 * (ties included) when converted to f16; stored as f16 for an f16 table. */
static void fill_table(struct gpu *g)
{
    for (uint64_t r = 0; r < g->rows; r++)
        for (uint64_t c = 0; c < g->dim; c++) {
            uint64_t h = mix64((r * 0x100000001b3ULL + c) ^ g->env->seed);
            float f = (float)((h >> 44) & 0xfffff) / 1048576.0f - 0.5f;
            unsigned char *p = g->src + r * g->row_bytes;
            if (g->dtype == EC_DTYPE_F32) {
                memcpy(p + 4 * c, &f, 4);
            } else {
                uint16_t v = ec_f32_to_f16(f);
                memcpy(p + 2 * c, &v, 2);
            }
        }
}

static int write_npy(struct gpu *g)
{
    char header[NPY_HEADER];
    size_t hl;
    FILE *f;

    snprintf(header, sizeof(header),
             "{'descr': '%s', 'fortran_order': False, 'shape': (%" PRIu64 ", %" PRIu64 "), }",
             g->dtype == EC_DTYPE_F32 ? "<f4" : "<f2", g->rows, g->dim);
    hl = strlen(header);
    while ((10 + hl + 1) % 64)
        header[hl++] = ' ';
    header[hl++] = '\n';
    f = fopen(g->npy, "wb");
    if (!f)
        return -1;
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hl & 0xff), f);
    fputc((int)(hl >> 8), f);
    fwrite(header, 1, hl, f);
    if (fwrite(g->src, 1, g->table_bytes, f) != g->table_bytes || fclose(f)) {
        unlink(g->npy);
        return -1;
    }
    return 0;
}

static void disconnect(struct gpu *g)
{
    ec_tensor_release(g->t);
    ec_client_close(g->c);
    g->t = NULL;
    g->c = NULL;
}

/* Our daemon for this table, with this device slab (0: tier off), and a
 * connection to it with the tensor resolved (imported first if need be). */
static int start(struct gpu *g, uint64_t gpu_slab, bool import)
{
    uint64_t shm = (g->table_bytes + g->table_bytes / 4 + (64ull << 20) + (1u << 20) - 1) &
                   ~(uint64_t)((1u << 20) - 1);
    int rc;

    disconnect(g);
    if (g->env->daemon_start(g->env->h, g->data, g->sock, shm, gpu_slab))
        return -1;
    if ((rc = ec_client_connect(g->sock, &g->c))) {
        gnote(g, "gpu: connect: %s", ec_last_error());
        return -1;
    }
    if (strcmp(ec_client_backend(g->c), "cuda") ||
        ec_client_device_count(g->c) <= g->env->device) {
        gnote(g, "gpu: libembcache runs its %s backend with %d GPU(s) here; the scenario needs "
                 "CUDA and GPU %d",
              ec_client_backend(g->c), ec_client_device_count(g->c), g->env->device);
        return -1;
    }
    if (import) {
        ec_import_opts io = {.model = g->model, .version = 1, .round = -1};
        const char *paths[1] = {g->npy};
        rc = ec_model_import(g->c, &io, paths, 1, NULL);
        unlink(g->npy); /* the partition file has it now */
        if (rc) {
            gnote(g, "gpu: import of %s failed: %s", g->model, ec_last_error());
            return -1;
        }
    }
    if ((rc = ec_tensor_resolve(g->c, g->model, "1", TENSOR, &g->t)) ||
        (rc = ec_tensor_info_get(g->t, &g->info))) {
        gnote(g, "gpu: %s: %s", g->model, ec_last_error());
        return -1;
    }
    return 0;
}

struct statq {
    const char *name[4];
    uint64_t v[4];
    bool found[4];
};

static int stat_cb(const char *name, uint64_t v, void *arg)
{
    struct statq *q = arg;
    for (int i = 0; i < 4 && q->name[i]; i++)
        if (!strcmp(name, q->name[i])) {
            q->v[i] = v;
            q->found[i] = true;
        }
    return 0;
}

static int prewarm(struct gpu *g, unsigned flags)
{
    ec_prewarm_progress p;

    for (;;) {
        if (ec_model_prewarm(g->c, g->model, "1", flags, &p)) {
            gnote(g, "gpu: prewarm of %s failed: %s", g->model, ec_last_error());
            return -1;
        }
        if (p.finished)
            break;
        if (stopped(g))
            return -1;
        usleep(20000);
    }
    if (p.failed) {
        gnote(g, "gpu: prewarm of %s: %" PRIu64 " partitions failed", g->model, p.failed);
        return -1;
    }
    return 0;
}

/* Poll the daemon until every partition of the table is in GPU `device`'s
 * tier: the prewarm answers when the host tier has it, the promotion
 * copies run after. */
static int wait_device_resident(struct gpu *g)
{
    char on[48], res[48];
    struct statq q = {.name = {on, res}};
    uint64_t t0 = bu_now_ns();

    snprintf(on, sizeof(on), "device%d_on", g->env->device);
    snprintf(res, sizeof(res), "device%d_resident_partitions", g->env->device);
    for (;;) {
        memset(q.found, 0, sizeof(q.found));
        if (ec_client_stats(g->c, stat_cb, &q)) {
            gnote(g, "gpu: stats: %s", ec_last_error());
            return -1;
        }
        if (q.found[0] && !q.v[0]) {
            gnote(g, "gpu: the daemon's device tier is off on GPU %d (see embcached.log in %s)",
                  g->env->device, g->env->tmp);
            return -1;
        }
        if (!q.found[1]) {
            gnote(g, "gpu: the daemon does not report %s: is it older than the device tier?",
                  res);
            return -1;
        }
        if (q.v[1] >= g->info.partitions)
            return 0;
        if (stopped(g))
            return -1;
        if (bu_now_ns() - t0 > (uint64_t)RESIDENT_WAIT_S * 1000000000u) {
            gnote(g, "gpu: %s: %s is %" PRIu64 " of %" PRIu64 " partitions after %d s: is "
                     "--gpu-slab too small for the table?",
                  g->model, res, q.v[1], g->info.partitions, RESIDENT_WAIT_S);
            return -1;
        }
        usleep(20000);
    }
}

static void tier_rows(struct gpu *g, uint64_t *dev, uint64_t *mapped)
{
    struct statq q = {.name = {"client_rows_device_tier", "client_rows_mapped_host"}};

    ec_client_stats(g->c, stat_cb, &q);
    *dev = q.v[0];
    *mapped = q.v[1];
}

/* Rows of the output (batch rows of out dtype) against the source. */
static uint64_t verify(struct gpu *g, const int64_t *ids, uint64_t batch, ec_dtype out)
{
    size_t out_row = g->dim * ec_dtype_size(out);
    uint64_t bad = 0;

    for (uint64_t k = 0; k < batch; k++) {
        const unsigned char *want = g->src + (uint64_t)ids[k] * g->row_bytes;
        if (out != g->dtype) {
            if (out == EC_DTYPE_F16)
                ec_f32_to_f16_n(g->conv, want, g->dim);
            else
                ec_f32_to_bf16_n(g->conv, want, g->dim);
            want = g->conv;
        }
        if (memcmp(g->check + k * out_row, want, out_row))
            bad++;
    }
    return bad;
}

static void run_config(struct gpu *g, const char *system, ec_dtype out, uint64_t batch,
                       bool want_device_tier, bool gpu_ids)
{
    size_t out_row = g->dim * ec_dtype_size(out), out_bytes = batch * out_row;
    ec_gather_opts o = {.flags = EC_GATHER_OUT_DEVICE | (gpu_ids ? EC_GATHER_IDS_DEVICE : 0u),
                        .device = g->env->device, .stream = g->stream, .out_dtype = out};
    const int64_t *ring = gpu_ids ? g->dring : g->ring;
    uint64_t verify_calls = VERIFY_BYTES / out_bytes, pos = 0, t0, timed = 0, dev0, map0, dev1,
             map1, warm = 0;
    bench_gpu_result r;
    cudaError_t e;
    int rc = 0;
    char label[96];
    bu_progress pg;

    verify_calls = verify_calls < 2 ? 2 : verify_calls > VERIFY_MAX_CALLS ? VERIFY_MAX_CALLS
                                                                          : verify_calls;
    init_result(&r, system);
    r.dtype = g->dtype_name;
    r.dim = g->dim;
    r.rows = g->rows;
    r.row_bytes = g->row_bytes;
    r.batch = batch;
    r.h = calloc(1, sizeof(*r.h));
    if (!r.h) {
        snprintf(r.note, sizeof(r.note), "out of memory");
        record(g, &r);
        return;
    }
    bu_hist_reset(r.h);
    tier_rows(g, &dev0, &map0);
    for (; warm < 3 && rc == 0; warm++) {
        rc = ec_tensor_gather_ex(g->t, ring, batch, g->dout, out_bytes, &o);
        if (rc == 0 && (e = cudaStreamSynchronize(g->stream)) != cudaSuccess)
            rc = -1, snprintf(r.note, sizeof(r.note), "stream: %s", cudaGetErrorString(e));
    }
    snprintf(label, sizeof(label), "gpu %s %s d=%" PRIu64 " b=%" PRIu64, system,
             g->dtype_name, g->dim, batch);
    bu_progress_start(&pg, label, g->env->seconds);
    while (rc == 0 && !stopped(g) &&
           (timed < (uint64_t)(g->env->seconds * 1e9) || r.calls < 3)) {
        const int64_t *ids;
        bool check = r.calls < verify_calls;
        if (pos + batch > g->ring_len)
            pos = 0;
        ids = g->ring + pos;
        if (check) { /* all ones: NaN in every float dtype, which no source row holds */
            if ((e = cudaMemsetAsync(g->dout, 0xff, out_bytes, g->stream)) == cudaSuccess)
                e = cudaStreamSynchronize(g->stream);
            if (e != cudaSuccess) {
                snprintf(r.note, sizeof(r.note), "cudaMemsetAsync: %s", cudaGetErrorString(e));
                break;
            }
        }
        t0 = bu_now_ns();
        rc = ec_tensor_gather_ex(g->t, ring + pos, batch, g->dout, out_bytes, &o);
        if (rc == 0 && (e = cudaStreamSynchronize(g->stream)) != cudaSuccess) {
            snprintf(r.note, sizeof(r.note), "stream: %s", cudaGetErrorString(e));
            break;
        }
        uint64_t dt = bu_now_ns() - t0;
        if (rc)
            break;
        bu_hist_add(r.h, dt);
        timed += dt;
        r.calls++;
        r.rows_done += batch;
        pos += batch;
        if (check) {
            if ((e = cudaMemcpy(g->check, g->dout, out_bytes, cudaMemcpyDeviceToHost)) !=
                cudaSuccess) {
                snprintf(r.note, sizeof(r.note), "copy back: %s", cudaGetErrorString(e));
                break;
            }
            r.mismatches += verify(g, ids, batch, out);
            r.verified += batch;
        }
        if ((r.calls & 63) == 0)
            bu_progress_update(&pg, (double)timed / 1e9);
    }
    bu_progress_end(&pg);
    if (rc && !r.note[0])
        snprintf(r.note, sizeof(r.note), "gather failed after %" PRIu64 " calls: %s", r.calls,
                 ec_last_error());
    tier_rows(g, &dev1, &map1);
    r.secs = (double)timed / 1e9;
    if (r.secs > 0) {
        r.rows_s = (double)r.rows_done / r.secs;
        r.gbps = r.rows_s * (double)g->row_bytes / 1e9;
    }
    r.ok = !r.note[0] && r.mismatches == 0 && r.calls > 0;
    if (r.ok) {
        /* Which tier served the rows (warm-up calls included). */
        double all = (double)(r.rows_done + warm * batch),
               on_dev = all > 0 ? (double)(dev1 - dev0) / all : 0,
               mapped = all > 0 ? (double)(map1 - map0) / all : 0;
        snprintf(r.note, sizeof(r.note), "device_tier_rows=%.3f mapped_host_rows=%.3f%s",
                 on_dev, mapped,
                 want_device_tier && on_dev < 0.99   ? " (rows not from the device tier)"
                 : !want_device_tier && mapped < 0.99 ? " (rows not from mapped host memory)"
                                                      : "");
    }
    record(g, &r);
}

/* One table: generate, import, (a) with the device tier, (b) without. */
static void run_table(struct gpu *g, ec_dtype dtype, const char *dname, uint64_t dim)
{
    uint64_t slab;
    size_t widest;

    g->dtype = dtype;
    g->dtype_name = dname;
    g->dim = dim;
    g->row_bytes = dim * ec_dtype_size(dtype);
    g->rows = (g->env->table_mib << 20) / g->row_bytes;
    if (g->rows < 1024)
        g->rows = 1024;
    g->table_bytes = g->rows * g->row_bytes;
    snprintf(g->model, sizeof(g->model), "gpu-%s-d%" PRIu64, dname, dim);
    snprintf(g->data, sizeof(g->data), "%s/gpu-data", g->env->tmp);
    snprintf(g->sock, sizeof(g->sock), "%s/gpu.sock", g->env->tmp);
    snprintf(g->npy, sizeof(g->npy), "%s/" TENSOR ".npy", g->env->tmp);
    g->ring_len = 4 * g->max_batch > (1u << 20) ? 4 * g->max_batch : (1u << 20);
    widest = g->dim * 4; /* an f32 row, or its f16 conversion */
    g->src = malloc(g->table_bytes);
    g->ring = malloc(g->ring_len * sizeof(*g->ring));
    g->check = malloc(g->max_batch * widest);
    g->conv = malloc(widest);
    if (!g->src || !g->ring || !g->check || !g->conv ||
        cudaMalloc(&g->dout, g->max_batch * widest) != cudaSuccess ||
        cudaMalloc((void **)&g->dring, g->ring_len * sizeof(*g->ring)) != cudaSuccess) {
        gnote(g, "gpu: %s: cannot allocate the table (%" PRIu64 " bytes) and a %" PRIu64
                 "-row output", g->model, g->table_bytes, g->max_batch);
        g->failed = 1;
        goto out;
    }
    fprintf(stderr, "embcache-bench: gpu: table %" PRIu64 " x %" PRIu64 " %s (%.0f MiB)\n",
            g->rows, dim, dname, (double)g->table_bytes / 1048576.0);
    fill_table(g);
    {
        uint64_t s = g->env->seed ^ (dim * 0x9e37u) ^ (uint64_t)dtype;
        for (size_t i = 0; i < g->ring_len; i++)
            g->ring[i] = (int64_t)(bu_splitmix(&s) % g->rows);
    }
    if (cudaMemcpy(g->dring, g->ring, g->ring_len * sizeof(*g->ring),
                   cudaMemcpyHostToDevice) != cudaSuccess) {
        gnote(g, "gpu: %s: cannot copy the ids to the GPU", g->model);
        g->failed = 1;
        goto out;
    }
    if (write_npy(g)) {
        gnote(g, "gpu: cannot write %s: %s", g->npy, strerror(errno));
        g->failed = 1;
        goto out;
    }

    /* (a) the device tier: a slab with room for the whole table. */
    slab = (g->table_bytes + g->table_bytes / 4 + (64ull << 20) + (1u << 20) - 1) &
           ~(uint64_t)((1u << 20) - 1);
    if (start(g, slab, true) || prewarm(g, EC_PREWARM_DEVICE) || wait_device_resident(g)) {
        gnote(g, "gpu: %s: no device-tier results", g->model);
        g->failed = 1;
    } else {
        for (unsigned b = 0; b < g->env->nbatch && !stopped(g); b++) {
            run_config(g, "embcache-dev", dtype, g->env->batch[b], true, false);
            run_config(g, "embcache-dev-gpuids", dtype, g->env->batch[b], true, true);
            if (dtype == EC_DTYPE_F32)
                run_config(g, "embcache-dev-f16", EC_DTYPE_F16, g->env->batch[b], true, false);
        }
    }
    /* (b) no device tier: the kernel reads the mapped host segment. */
    if (!stopped(g)) {
        /* imported here when (a) stopped before it could */
        if (start(g, 0, access(g->npy, R_OK) == 0) || prewarm(g, 0)) {
            gnote(g, "gpu: %s: no mapped-host results", g->model);
            g->failed = 1;
        } else {
            for (unsigned b = 0; b < g->env->nbatch && !stopped(g); b++)
                run_config(g, "embcache-mapped", dtype, g->env->batch[b], false, false);
        }
    }
    if (g->c) { /* the partition file is not needed any more */
        ec_tensor_release(g->t);
        g->t = NULL;
        ec_model_retire(g->c, g->model, 1, 1);
    }
out:
    disconnect(g);
    g->env->daemon_stop(g->env->h);
    unlink(g->npy);
    cudaFree(g->dout);
    cudaFree(g->dring);
    g->dout = NULL;
    g->dring = NULL;
    free(g->src);
    free(g->ring);
    free(g->check);
    free(g->conv);
    g->src = g->check = g->conv = NULL;
    g->ring = NULL;
}

/* ---- the closing table ---- */

static void cellf(FILE *f, double v, int dec, int w)
{
    if (v < 0 || !isfinite(v))
        fprintf(f, " %*s", w, "-");
    else
        fprintf(f, " %*.*f", w, dec, v);
}

static void ggoal(FILE *f, const char *what, double v, double limit, bool le)
{
    if (v < 0) {
        fprintf(f, "goal %-58s measured      -  (not run)\n", what);
        return;
    }
    fprintf(f, "goal %-58s measured %8.2f  %s\n", what, v,
            (le ? v <= limit : v >= limit) ? "met" : "MISSED");
}

static void print_table(const struct gpu *g)
{
    FILE *f = g->env->out;
    uint64_t big = g->max_batch;

    fprintf(f, "\ngpu: rows into GPU %d (%s) memory; p50 microseconds per call (call + stream "
               "sync), GB/s of source rows; H2D pinned %.2f GB/s\n",
            g->env->device, g->dev_name, g->h2d_gbps);
    fprintf(f, "%-5s %5s %6s %10s %10s %10s %10s %10s %10s %8s %8s %7s %7s %7s %7s %7s\n",
            "dtype", "dim", "batch", "(a)dev", "(a')gpuid", "(a)->f16", "(b)mapped",
            "(c)t-host", "(d)t-dev", "(a)GB/s", "(b)GB/s", "(b)/H2D", "(a)/(d)", "(a')/(d)",
            "(c)/(a)", "(c)/(b)");
    for (unsigned t = 0; t < g->env->ndtypes; t++)
        for (unsigned d = 0; d < g->env->ndims; d++)
            for (unsigned b = 0; b < g->env->nbatch; b++) {
                const char *dt = g->env->dtypes[t];
                uint64_t dim = g->env->dims[d], batch = g->env->batch[b];
                const struct gres *a = gfind(g, "embcache-dev", dt, dim, batch),
                                  *ag = gfind(g, "embcache-dev-gpuids", dt, dim, batch),
                                  *a16 = gfind(g, "embcache-dev-f16", dt, dim, batch),
                                  *bm = gfind(g, "embcache-mapped", dt, dim, batch),
                                  *c = gfind(g, "torch-host", dt, dim, batch),
                                  *dd = gfind(g, "torch-device", dt, dim, batch);
                if (!a && !ag && !a16 && !bm && !c && !dd)
                    continue;
                fprintf(f, "%-5s %5" PRIu64 " %6" PRIu64, dt, dim, batch);
                cellf(f, a ? a->p50 : -1, 1, 10);
                cellf(f, ag ? ag->p50 : -1, 1, 10);
                cellf(f, a16 ? a16->p50 : -1, 1, 10);
                cellf(f, bm ? bm->p50 : -1, 1, 10);
                cellf(f, c ? c->p50 : -1, 1, 10);
                cellf(f, dd ? dd->p50 : -1, 1, 10);
                cellf(f, a ? a->gbps : -1, 2, 8);
                cellf(f, bm ? bm->gbps : -1, 2, 8);
                cellf(f, bm ? gratio(bm->gbps, g->h2d_gbps) : -1, 2, 7);
                cellf(f, a && dd ? gratio(a->p50, dd->p50) : -1, 2, 7);
                cellf(f, ag && dd ? gratio(ag->p50, dd->p50) : -1, 2, 7);
                cellf(f, a && c ? gratio(c->p50, a->p50) : -1, 2, 7);
                cellf(f, bm && c ? gratio(c->p50, bm->p50) : -1, 2, 7);
                fprintf(f, "\n");
            }
    fprintf(f, "\ngpu goals (at batch %" PRIu64 ", the largest):\n", big);
    for (unsigned t = 0; t < g->env->ndtypes; t++)
        for (unsigned d = 0; d < g->env->ndims; d++) {
            const char *dt = g->env->dtypes[t];
            uint64_t dim = g->env->dims[d];
            const struct gres *a = gfind(g, "embcache-dev", dt, dim, big),
                              *ag = gfind(g, "embcache-dev-gpuids", dt, dim, big),
                              *bm = gfind(g, "embcache-mapped", dt, dim, big),
                              *dd = gfind(g, "torch-device", dt, dim, big);
            char what[96];
            snprintf(what, sizeof(what), "%s dim %" PRIu64 ": (a) / (d) p50 time (<= 1.2)", dt,
                     dim);
            ggoal(f, what, a && dd ? gratio(a->p50, dd->p50) : -1, 1.2, true);
            snprintf(what, sizeof(what), "%s dim %" PRIu64 ": (a') / (d) p50 time (<= 1.2)", dt,
                     dim);
            ggoal(f, what, ag && dd ? gratio(ag->p50, dd->p50) : -1, 1.2, true);
            snprintf(what, sizeof(what), "%s dim %" PRIu64 ": (b) GB/s / H2D pinned (>= 0.8)", dt,
                     dim);
            ggoal(f, what, bm ? gratio(bm->gbps, g->h2d_gbps) : -1, 0.8, false);
        }
    fflush(f);
}

int bench_gpu_run(const bench_gpu_env *env)
{
    struct gpu g = {.env = env};
    struct cudaDeviceProp prop;
    cudaError_t e;

    for (unsigned i = 0; i < env->nbatch; i++)
        if (env->batch[i] > g.max_batch)
            g.max_batch = env->batch[i];
    if (!g.max_batch || !env->ndims || !env->ndtypes) {
        gnote(&g, "gpu: nothing to run (no batch sizes, dims or dtypes)");
        return -1;
    }
    if ((e = cudaSetDevice(env->device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, env->device)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking)) != cudaSuccess) {
        gnote(&g, "gpu: GPU %d: %s", env->device, cudaGetErrorString(e));
        return -1;
    }
    snprintf(g.dev_name, sizeof(g.dev_name), "%.200s, sm_%d%d, PCI %02x:%02x", prop.name,
             prop.major, prop.minor, prop.pciBusID, prop.pciDeviceID);
    fprintf(stderr, "embcache-bench: gpu: GPU %d: %s\n", env->device, g.dev_name);

    measure_h2d(&g);
    if (env->torch_script && !stopped(&g))
        run_torch(&g);
    for (unsigned t = 0; t < env->ndtypes && !stopped(&g); t++) {
        const char *name = env->dtypes[t];
        ec_dtype d = !strcmp(name, "f32") ? EC_DTYPE_F32
                     : !strcmp(name, "f16") ? EC_DTYPE_F16
                                            : EC_DTYPE_INVALID;
        if (d == EC_DTYPE_INVALID) {
            gnote(&g, "gpu: table dtype '%s': use f32 or f16", name);
            g.failed = 1;
            continue;
        }
        for (unsigned i = 0; i < env->ndims && !stopped(&g); i++)
            run_table(&g, d, name, env->dims[i]);
    }
    print_table(&g);
    cudaStreamDestroy(g.stream);
    free(g.res);
    return g.failed || stopped(&g) ? -1 : 0;
}
