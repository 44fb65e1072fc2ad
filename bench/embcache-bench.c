/*
 * embcache-bench.c - lookup latency and throughput of embcache, side by side
 * with what users run today (issue 4), and the row-cache comparisons at the
 * same memory.
 *
 * Starts its own embcached (or attaches to one with --socket), imports a
 * generated table (default 1,000,000 x 128 f32; row r, word c derived from
 * a hash of (r, c) so every row can be checked), and runs named scenarios
 * (one function and one line of scenarios[] each):
 *
 *   hit      batched gathers of resident rows, per batch size and id
 *            distribution, next to the baselines of bench/baseline.h (the
 *            flat, hash-map and mmap floors, Redis, memcached) on the same
 *            ids (scen_hit.c);
 *   miss     cold partition faults, depth 1 and 32, next to fio (scen_miss.c);
 *   mixed    budget = a quarter of the table, Zipf ids from cold, next to
 *            mmap and mmap-random at the same memory and an exact LRU
 *            (scen_mixed.c);
 *   rowmiss  missed rows from a small budget, 32 clients x 1 row and 1 x 32
 *            rows, next to fio 4 KiB randread at qd 32 (scen_miss.c);
 *   scale    1, 2, 4, 8 client processes gathering at once (scen_hit.c);
 *   large    (not default) a table larger than memory, streamed to disk,
 *            as mixed (scen_mixed.c);
 *   gpu      (not default) gathers into GPU memory (scenario_gpu.c, in a
 *            CUDA build; skipped otherwise).
 *
 * Every configuration runs --repeat times; results are medians with their
 * range (bench_output.c prints the lines, the table with ratio columns and
 * the goals, JSON and CSV, plots). Exit status: 0, 1 when a scenario failed
 * or any row read back differed from the source, 2 for bad usage, 77 when
 * only the gpu scenario was asked for and it cannot run here.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "bench/baseline_server.h"
#include "bench/bench.h"
#include "bench/memhold.h"
#include "bench/scenario_gpu.h"
#include "shm/segment.h"

static volatile pid_t g_hold_pid;

static void on_signal(int sig)
{
    if (g_stop) { /* second signal: kill what we started and leave now */
        if (g_daemon_pid > 0)
            kill(g_daemon_pid, SIGKILL);
        if (g_hold_pid > 0)
            kill(g_hold_pid, SIGKILL);
        ec_bl_server_kill_all();
        _exit(128 + sig);
    }
    g_stop = 1;
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
    struct rep v = rep_none();

    snprintf(r->dtype, sizeof(r->dtype), "%s", g->dtype ? g->dtype : "-");
    r->table_rows = g->rows;
    r->dim = g->dim;
    r->row_bytes = g->row_bytes;
    r->secs = g->secs;
    r->calls = g->calls;
    r->rows_done = g->rows_done;
    r->verified = g->verified;
    r->mismatches = g->mismatches;
    v.rows_s = g->rows_s;
    v.gbps = g->gbps;
    if (g->h && g->h->count) {
        v.p50 = (double)bu_hist_quantile(g->h, 0.50) / 1e3;
        v.p90 = (double)bu_hist_quantile(g->h, 0.90) / 1e3;
        v.p99 = (double)bu_hist_quantile(g->h, 0.99) / 1e3;
        v.p999 = (double)bu_hist_quantile(g->h, 0.999) / 1e3;
        v.max = (double)g->h->max / 1e3;
    } else {
        v.p50 = g->p50_us;
        v.p90 = g->p90_us;
        v.p99 = g->p99_us;
        v.p999 = g->p999_us;
        v.max = g->max_us;
    }
    res_add_rep(r, &v);
    r->h = g->h;
    g->h = NULL;
    if (g->note[0])
        res_note(r, "%s", g->note);
    if (!g->ok)
        r->err = true;
    res_finish(x, r);
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
    bool standard; /* in the default set */
    const char *help;
};

static const struct scenario scenarios[] = {
    {"hit", scen_hit, true, "batched gathers of resident rows, next to every baseline"},
    {"miss", scen_miss, true, "cold partition faults (O_DIRECT) at depth 1 and 32, next to fio"},
    {"mixed", scen_mixed, true,
     "budget = table/4, Zipf(0.99) x 256 from cold, next to mmap at the same memory"},
    {"rowmiss", scen_rowmiss, true,
     "missed rows (budget table/16): 32 clients x 1 row, 1 x 32 rows, next to fio 4k qd32"},
    {"scale", scen_scale, true, "1..N client processes gathering batches of 256 at once"},
    {"large", scen_large, false,
     "--large-rows streamed to disk, --large-budget, Zipf x 256, next to mmap at same memory"},
    {"gpu", scen_gpu, false,
     "gathers into GPU memory: device tier, mapped host memory, H2D, PyTorch"},
};
#define NSCEN (sizeof(scenarios) / sizeof(scenarios[0]))

/* ---- options ---- */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: embcache-bench [--socket PATH | --start-daemon] [--embcached PATH]\n"
            "         [--data-dir DIR] [--rows N] [--dim D] [--dtype f32|f16|f64|i8|u8|i32|i64]\n"
            "         [--scenario LIST] [--batch 1,16,256,4096] [--dist uniform,zipf]\n"
            "         [--seconds S] [--repeat N] [--clients 1,2,4,8] [--budget BYTES]\n"
            "         [--baselines flat,hashmap,mmap,mmap-random,redis-mget,redis-pipeline,\n"
            "                      memcached,memcached-get,memcached-meta|all|none]\n"
            "         [--server-transport unix|tcp] [--hold-memory on|off] [--hold-slack BYTES]\n"
            "         [--warm CAPACITIES]\n"
            "         [--hit-cache-mode auto|partitions|rows]\n"
            "         [--large-rows N] [--large-budget BYTES]\n"
            "         [--json[=FILE]] [--csv[=FILE]] [--plot DIR] [--seed S] [--quick]\n"
            "         [--gpu-batch 1,4,..,65536] [--gpu-dims 64,256,1024,4096]\n"
            "         [--gpu-dtypes f32,f16] [--gpu-table-mib 256] [--gpu-device N]\n"
            "         [--gpu-python PATH] [--gpu-torch gpu_torch_baseline.py|none]\n"
            "       embcache-bench --check-json FILE\n"
            "scenarios (default: the first five):\n");
    for (size_t i = 0; i < NSCEN; i++)
        fprintf(f, "  %-8s %s\n", scenarios[i].name, scenarios[i].help);
    fprintf(f, "Without --socket it starts its own embcached (next to this program, or\n"
               "--embcached PATH) on a temporary data directory and socket. --repeat defaults\n"
               "to 3 (1 with --quick).\n");
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

static bool on_off(const char *what, const char *s)
{
    if (!strcmp(s, "on"))
        return true;
    if (!strcmp(s, "off"))
        return false;
    fprintf(stderr, "embcache-bench: %s '%s': use on or off\n", what, s);
    exit(2);
}

static void parse_args(int argc, char **argv, struct opts *o)
{
    enum { O_SOCKET = 256, O_START, O_DATA, O_ROWS, O_DIM, O_DTYPE, O_SCEN, O_BATCH, O_DIST,
           O_SECS, O_CLIENTS, O_BUDGET, O_BASE, O_JSON, O_CSV, O_PLOT, O_SEED, O_QUICK,
           O_EMBCACHED, O_CHECK, O_HELP, O_GPU_BATCH, O_GPU_DIMS, O_GPU_DTYPES, O_GPU_MIB,
           O_GPU_DEVICE, O_GPU_PYTHON, O_GPU_TORCH, O_REPEAT, O_LARGE_ROWS, O_LARGE_BUDGET,
           O_HOLD, O_HOLD_SLACK, O_TRANSPORT, O_HIT_MODE, O_WARM };
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
        {"repeat", required_argument, NULL, O_REPEAT},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"budget", required_argument, NULL, O_BUDGET},
        {"baselines", required_argument, NULL, O_BASE},
        {"server-transport", required_argument, NULL, O_TRANSPORT},
        {"hold-memory", required_argument, NULL, O_HOLD},
        {"hit-cache-mode", required_argument, NULL, O_HIT_MODE},
        {"hold-slack", required_argument, NULL, O_HOLD_SLACK},
        {"warm", required_argument, NULL, O_WARM},
        {"large-rows", required_argument, NULL, O_LARGE_ROWS},
        {"large-budget", required_argument, NULL, O_LARGE_BUDGET},
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
    const char *scen = "hit,miss,mixed,rowmiss,scale", *batch = "1,16,256,4096",
               *dist = "uniform,zipf", *clients = "1,2,4,8", *base = "all",
               *gpu_batch = "1,4,16,64,256,1024,4096,16384,65536", *gpu_dims = "64,256,1024,4096",
               *gpu_dtypes = "f32,f16";
    uint64_t gpu_mib = 0, repeat = 0;
    double secs = -1;
    int ch;

    o->rows = 1000000;
    o->dim = 128;
    o->dtype_name = "f32";
    o->seed = 42;
    o->start_daemon = true;
    o->hold = true;
    o->hold_slack = 256u << 20;
    o->warm = 2;
    o->large_rows = 16000000;
    o->large_budget = 2ull << 30;
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
        case O_REPEAT:
            repeat = parse_u64("--repeat", optarg);
            if (repeat < 1 || repeat > MAX_REP) {
                fprintf(stderr, "embcache-bench: --repeat must be in 1..%d\n", MAX_REP);
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
        case O_TRANSPORT:
            if (strcmp(optarg, "unix") && strcmp(optarg, "tcp")) {
                fprintf(stderr, "embcache-bench: --server-transport '%s': use unix or tcp\n",
                        optarg);
                exit(2);
            }
            o->tcp = !strcmp(optarg, "tcp");
            break;
        case O_HOLD: o->hold = on_off("--hold-memory", optarg); break;
        case O_HIT_MODE:
            if (!strcmp(optarg, "auto"))
                o->hit_mode = EC_CACHE_AUTO;
            else if (!strcmp(optarg, "partitions"))
                o->hit_mode = EC_CACHE_PARTITIONS;
            else if (!strcmp(optarg, "rows"))
                o->hit_mode = EC_CACHE_ROWS;
            else {
                fprintf(stderr, "embcache-bench: --hit-cache-mode '%s': use auto, partitions "
                                "or rows\n", optarg);
                exit(2);
            }
            break;
        case O_HOLD_SLACK: o->hold_slack = parse_u64("--hold-slack", optarg); break;
        case O_WARM: {
            char *end;
            o->warm = strtod(optarg, &end);
            if (*end || !(o->warm >= 0 && o->warm <= 100)) {
                fprintf(stderr, "embcache-bench: --warm '%s' must be 0..100 (cache capacities "
                                "of rows gathered before timing)\n", optarg);
                exit(2);
            }
            break;
        }
        case O_LARGE_ROWS: o->large_rows = parse_u64("--large-rows", optarg); break;
        case O_LARGE_BUDGET:
            if (ec_parse_size(optarg, &o->large_budget) || o->large_budget < (4u << 20)) {
                fprintf(stderr, "embcache-bench: --large-budget '%s': a size of at least 4M\n",
                        optarg);
                exit(2);
            }
            break;
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
    o->repeat = repeat ? (unsigned)repeat : o->quick ? 1 : 3;
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
        for (unsigned i = 0; ec_baseline_names[i] && o->nbase < 12; i++)
            snprintf(o->base[o->nbase++], sizeof(o->base[0]), "%s", ec_baseline_names[i]);
    } else if (strcmp(base, "none")) {
        char buf[256], *save = NULL;
        snprintf(buf, sizeof(buf), "%s", base);
        for (char *t = strtok_r(buf, ",", &save); t && o->nbase < 12;
             t = strtok_r(NULL, ",", &save)) {
            bool known = false;
            for (unsigned i = 0; ec_baseline_names[i]; i++)
                known |= !strcmp(t, ec_baseline_names[i]);
            if (!known) {
                fprintf(stderr, "embcache-bench: unknown baseline '%s'; valid:", t);
                for (unsigned i = 0; ec_baseline_names[i]; i++)
                    fprintf(stderr, " %s,", ec_baseline_names[i]);
                fprintf(stderr, " all, none\n");
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
    /* the .npy (kept: the mmap baselines map it) and the partition file */
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

static bool asked_for(const struct opts *o, const char *name)
{
    for (unsigned i = 0; i < o->nscen; i++)
        if (!strcmp(o->scen[i], name))
            return true;
    return false;
}

int main(int argc, char **argv)
{
    static struct ctx x;
    struct sigaction sa;
    FILE *jf = NULL, *cf = NULL;
    int rc = 0;
    bool need_table = false;
    char why[256];

    parse_args(argc, argv, &x.o);
    if (x.o.check_json) {
        const char *expect[NSCEN + 1];
        size_t n = 0;
        for (size_t i = 0; i < NSCEN; i++)
            if (scenarios[i].standard)
                expect[n++] = scenarios[i].name;
        expect[n] = NULL;
        return check_json(x.o.check_json, expect);
    }
    txt = ((x.o.json && !x.o.json_path) || (x.o.csv && !x.o.csv_path)) ? stderr : stdout;
    /* The gpu scenario where it cannot run is said so before anything
     * starts; asked for alone, that is a skipped run (77), as ctest and
     * scripts expect. It and large bring their own tables: the main one is
     * made only for the other scenarios. */
    for (unsigned i = 0; i < x.o.nscen; i++) {
        if (strcmp(x.o.scen[i], "gpu")) {
            need_table |= strcmp(x.o.scen[i], "large") != 0;
            continue;
        }
        if (gpu_runnable(&x.o, why, sizeof(why)))
            continue;
        if (x.o.nscen == 1) {
            /* skipped only where there is no GPU to run on; a machine with
             * one that cannot run it, or EMBCACHE_REQUIRE_GPU=1, fails */
            const char *req = getenv("EMBCACHE_REQUIRE_GPU");
            bool nodes = access("/dev/nvidiactl", F_OK) == 0 || access("/dev/nvidia0", F_OK) == 0;
            if ((req && !strcmp(req, "1")) || nodes) {
                printf("gpu scenario FAILED: %s%s\n", why,
                       nodes ? " (this machine has an NVIDIA device)" : " (EMBCACHE_REQUIRE_GPU=1)");
                return 1;
            }
            printf("gpu scenario skipped: no NVIDIA device: %s\n", why);
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
    /* Redis and memcached: Unix sockets in our temporary directory */
    ec_bl_set_tmpdir(x.tmp);
    ec_bl_set_transport(x.o.tcp ? EC_BL_TCP : EC_BL_UNIX);
    if (need_table && check_sizes(&x)) {
        rc = 1;
        goto out;
    }
    /* The memory holder, forked before the table is made and before any
     * connection: it keeps no descriptor and copies no big mapping. */
    if (!(asked_for(&x.o, "mixed") || asked_for(&x.o, "large")) || !x.o.start_daemon)
        snprintf(x.hold_why, sizeof(x.hold_why), "no memory holder: not needed");
    else if (!x.o.hold)
        snprintf(x.hold_why, sizeof(x.hold_why), "no memory holder: --hold-memory off");
    else if (memhold_start(&x.hold, why, sizeof(why))) {
        snprintf(x.hold_why, sizeof(x.hold_why), "no memory holder: %.200s", why);
        note(&x, "%s (the mmap comparisons will say fair=0)", x.hold_why);
    } else {
        g_hold_pid = memhold_pid(x.hold);
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
    x.main.what = "main";
    x.main.rows = x.o.rows;
    if (x.o.start_daemon) {
        if (x.o.data_dir)
            snprintf(x.data, sizeof(x.data), "%s", x.o.data_dir);
        else
            snprintf(x.data, sizeof(x.data), "%s/data", x.tmp);
        snprintf(x.sock, sizeof(x.sock), "%s/embcached.sock", x.tmp);
        snprintf(x.main.model, sizeof(x.main.model), "%s", MODEL);
    } else {
        snprintf(x.sock, sizeof(x.sock), "%s", x.o.socket);
        if (x.o.data_dir)
            snprintf(x.data, sizeof(x.data), "%s", x.o.data_dir);
        snprintf(x.main.model, sizeof(x.main.model), "%s-%d", MODEL, (int)getpid());
    }
    snprintf(x.main.npy, sizeof(x.main.npy), "%s/" TENSOR ".npy", x.tmp);
    if (!need_table)
        goto run;
    x.main.src = malloc(x.table_bytes);
    if (!x.main.src) {
        fprintf(stderr, "embcache-bench: cannot allocate the %" PRIu64 "-byte table\n",
                x.table_bytes);
        rc = 1;
        goto out;
    }
    fprintf(stderr, "embcache-bench: table %" PRIu64 " x %" PRIu64 " %s (%.1f MiB), %s\n",
            x.o.rows, x.o.dim, x.o.dtype_name, (double)x.table_bytes / 1048576.0,
            x.o.start_daemon ? "own daemon" : x.sock);
    if (write_npy(&x, &x.main)) {
        rc = 1;
        goto out;
    }
    if (x.o.start_daemon && daemon_spawn(&x, x.data, x.sock, shm_size_for(&x), 0, NO_GPU_SLAB)) {
        rc = 1;
        goto out;
    }
    if (ec_client_connect(x.sock, &x.c)) {
        fprintf(stderr, "embcache-bench: %s\n", ec_last_error());
        rc = 1;
        goto out;
    }
    fprintf(stderr, "embcache-bench: importing\n");
    if (import_table(&x, x.c, &x.main, x.data)) {
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
            x.main.info.partitions, x.main.info.rows_per_partition);
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
        ec_model_retire(x.c, x.main.model, 1, 1);
    }
    disconnect(&x);
    daemon_stop(&x);
    g_hold_pid = 0;
    memhold_stop(x.hold);
    if (jf)
        fclose(jf);
    if (cf)
        fclose(cf);
    ec_segment_rmtree(x.tmp); /* the data directory and the .npy too, unless --data-dir */
    for (size_t i = 0; i < x.nres; i++) {
        free(x.res[i]->h);
        free(x.res[i]);
    }
    free(x.res);
    free(x.main.src);
    free(x.tmp);
    if (g_stop && rc == 0)
        rc = 130;
    return g_stop ? 130 : rc;
}
