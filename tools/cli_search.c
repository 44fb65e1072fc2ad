/*
 * cli_search.c - `embcache search`: top-k over a tensor, exact or through
 * its IVF index (--nprobe), for queries read from a .npy file, through
 * ec_search() (include/embcache_search.h); and `embcache index build|info`:
 * build a tensor's IVF index (ec_index_build) with a progress line on
 * standard error, or describe it (for a dynamic table, with how stale it
 * is: ec_index_staleness_get).
 *
 * Part of the embcache command-line tool (tools/embcache.c dispatches here);
 * the queries file is parsed by the daemon's own .npy parser
 * (core/tensorfile.h), linked in as it is for `embcache recover`.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dtype.h"
#include "core/tensorfile.h"
#include "embcache.h"
#include "cli.h"

static int failed(int rc)
{
    return cli_fail("embcache search", rc, NULL);
}

/* The queries of a .npy file of f32 or f64, shape [dim] or [nq, dim], as
 * f32 (malloc'd). EXIT_BADINPUT or EXIT_NOTFOUND with a message on failure. */
static int read_queries(const char *path, float **out, size_t *nq, size_t *dim)
{
    ec_tf_list l = {0};
    const ec_tf_tensor *t;
    uint8_t *raw = NULL;
    float *q = NULL;
    size_t n, esz;
    int fd, rc = EXIT_BADINPUT;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "embcache search: cannot open %s: %s\n", path, strerror(errno));
        return errno == ENOENT ? EXIT_NOTFOUND : EXIT_BADINPUT;
    }
    if (ec_npy_parse_fd(fd, "queries", &l)) {
        fprintf(stderr, "embcache search: %s: %s\n", path, ec_last_error());
        goto out;
    }
    t = &l.tensors[0];
    if ((t->dtype != EC_DTYPE_F32 && t->dtype != EC_DTYPE_F64) || t->ndim < 1 ||
        t->ndim > 2 || t->shape[t->ndim - 1] == 0 || (t->ndim == 2 && t->shape[0] == 0)) {
        fprintf(stderr, "embcache search: %s must hold a float32 or float64 array of shape "
                        "[dim] or [queries, dim] (it is %s with %u dimension(s))\n",
                path, ec_dtype_name(t->dtype) ? ec_dtype_name(t->dtype) : "?", t->ndim);
        goto out;
    }
    *dim = (size_t)t->shape[t->ndim - 1];
    *nq = t->ndim == 2 ? (size_t)t->shape[0] : 1;
    esz = ec_dtype_size(t->dtype);
    n = *nq * *dim;
    raw = malloc(t->data_len ? (size_t)t->data_len : 1);
    q = malloc(n * sizeof(float));
    if (!raw || !q) {
        fprintf(stderr, "embcache search: out of memory for %zu queries\n", *nq);
        rc = EXIT_FAIL;
        goto out;
    }
    if (pread(fd, raw, (size_t)t->data_len, (off_t)t->data_off) != (ssize_t)t->data_len) {
        fprintf(stderr, "embcache search: cannot read %s\n", path);
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        uint8_t b[8];
        memcpy(b, raw + i * esz, esz);
        if (t->byteswap)
            for (size_t j = 0; j < esz / 2; j++) {
                uint8_t x = b[j];
                b[j] = b[esz - 1 - j];
                b[esz - 1 - j] = x;
            }
        if (esz == 4) {
            memcpy(&q[i], b, 4);
        } else {
            double d;
            memcpy(&d, b, 8);
            q[i] = (float)d;
        }
    }
    *out = q;
    q = NULL;
    rc = EXIT_OK;
out:
    free(q);
    free(raw);
    ec_tf_list_clear(&l);
    close(fd);
    return rc;
}

/* "ip" (or "dot"), "cosine" (or "cos"), "l2": 0; else -1 after a message. */
static int parse_metric(const char *prog, const char *s, ec_metric *out)
{
    if (!strcmp(s, "ip") || !strcmp(s, "dot"))
        *out = EC_METRIC_IP;
    else if (!strcmp(s, "cosine") || !strcmp(s, "cos"))
        *out = EC_METRIC_COSINE;
    else if (!strcmp(s, "l2"))
        *out = EC_METRIC_L2;
    else {
        fprintf(stderr, "%s: unknown metric '%s' (ip, cosine, l2)\n", prog, s);
        return -1;
    }
    return 0;
}

static int usage_search(FILE *f, int rc)
{
    fprintf(f,
            "usage: embcache search MODEL TENSOR --query FILE.npy [-k N] [--metric ip|cosine|l2]\n"
            "                       [--version V] [--threads T] [--nprobe N] [--json]\n"
            "Exact top-k rows of TENSOR (a 2-D f32, f16 or bf16 tensor of MODEL, at version\n"
            "V or an alias, default 'current') for each query in FILE.npy (float32 or\n"
            "float64, shape [dim] or [queries, dim]), computed in this process over the\n"
            "shared segment. -k: results per query (default 10). --metric: inner product\n"
            "(default), cosine, or squared L2 distance (lowest first). Prints one line per\n"
            "result: query, rank, row id, score; --json prints one object per query.\n"
            "--nprobe N: approximate, through the tensor's IVF index (`embcache index\n"
            "build`): only the rows of the N lists nearest each query; the index must\n"
            "have been built for --metric.\n");
    return rc;
}

int cli_search_main(int argc, char **argv, const char *socket_path)
{
    static const struct option o[] = {
        {"query", required_argument, NULL, 'q'},
        {"k", required_argument, NULL, 'k'},
        {"metric", required_argument, NULL, 'm'},
        {"version", required_argument, NULL, 'v'},
        {"threads", required_argument, NULL, 't'},
        {"nprobe", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *qpath = NULL, *version = "current";
    ec_metric metric = EC_METRIC_IP;
    ec_search_opts so = {0};
    unsigned long long k = 10;
    bool json = false;
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    float *queries = NULL, *scores = NULL;
    int64_t *ids = NULL;
    size_t nq = 0, dim = 0;
    int ch, rc, x;
    char *end;

    while ((ch = getopt_long(argc, argv, "q:k:m:v:t:n:jh", o, NULL)) != -1) {
        switch (ch) {
        case 'q': qpath = optarg; break;
        case 'v': version = optarg; break;
        case 'j': json = true; break;
        case 'k':
            errno = 0;
            k = strtoull(optarg, &end, 10);
            if (errno || *end || end == optarg || k == 0 || optarg[0] == '-') {
                fprintf(stderr, "embcache search: -k must be a positive integer, not '%s'\n",
                        optarg);
                return EXIT_USAGE;
            }
            break;
        case 't': {
            unsigned long v;
            errno = 0;
            v = strtoul(optarg, &end, 10);
            if (errno || *end || end == optarg || v > 1024) {
                fprintf(stderr, "embcache search: --threads must be 0..1024, not '%s'\n",
                        optarg);
                return EXIT_USAGE;
            }
            so.threads = (uint32_t)v;
            break;
        }
        case 'n': {
            uint64_t v;
            if (cli_parse_u64("embcache search", "--nprobe", optarg, 0, UINT32_MAX, &v))
                return EXIT_USAGE;
            so.nprobe = (uint32_t)v;
            break;
        }
        case 'm':
            if (parse_metric("embcache search", optarg, &metric))
                return EXIT_USAGE;
            break;
        case 'h': return usage_search(stdout, EXIT_OK);
        default: return usage_search(stderr, EXIT_USAGE);
        }
    }
    if (argc - optind != 2 || !qpath) {
        fprintf(stderr, "embcache search: needs MODEL TENSOR and --query FILE.npy (see "
                        "'embcache search --help')\n");
        return EXIT_USAGE;
    }
    if ((x = read_queries(qpath, &queries, &nq, &dim)))
        return x;
    if (k > SIZE_MAX / sizeof(float) / nq) {
        fprintf(stderr, "embcache search: -k %llu is too large for %zu queries\n", k, nq);
        free(queries);
        return EXIT_USAGE;
    }
    scores = malloc(nq * (size_t)k * sizeof(*scores));
    ids = malloc(nq * (size_t)k * sizeof(*ids));
    if (!scores || !ids) {
        fprintf(stderr, "embcache search: out of memory for %zu x %llu results\n", nq, k);
        x = EXIT_FAIL;
        goto out;
    }
    if ((rc = ec_client_connect(socket_path, &c)) ||
        (rc = ec_tensor_resolve(c, argv[optind], version, argv[optind + 1], &t)) ||
        (rc = ec_search(t, queries, nq, dim, (size_t)k, metric, &so, scores, ids))) {
        x = failed(rc);
        goto out;
    }
    for (size_t q = 0; q < nq; q++) {
        if (json) {
            printf("{\"query\": %zu, \"metric\": \"%s\", \"ids\": [", q, ec_metric_name(metric));
            for (size_t i = 0; i < k; i++)
                printf("%s%" PRId64, i ? ", " : "", ids[q * k + i]);
            printf("], \"scores\": [");
            for (size_t i = 0; i < k; i++) {
                float v = scores[q * k + i];
                if (ids[q * k + i] < 0)
                    printf("%snull", i ? ", " : "");
                else
                    printf("%s%.9g", i ? ", " : "", (double)v);
            }
            printf("]}\n");
            continue;
        }
        for (size_t i = 0; i < k; i++) {
            if (ids[q * k + i] < 0)
                break;
            printf("%zu\t%zu\t%" PRId64 "\t%.9g\n", q, i + 1, ids[q * k + i],
                   (double)scores[q * k + i]);
        }
    }
    x = EXIT_OK;
out:
    ec_tensor_release(t);
    ec_client_close(c);
    free(ids);
    free(scores);
    free(queries);
    return x;
}

/* ------------------------------------------------------------------ */
/* embcache index build|info                                           */

static int usage_index(FILE *f, int rc)
{
    fprintf(f,
            "usage: embcache index build MODEL VERSION TENSOR [--nlist N] [--metric ip|cosine|l2]\n"
            "                            [--iters N] [--train-rows N] [--seed S]\n"
            "       embcache index info MODEL VERSION TENSOR [--json]\n"
            "build: cluster the rows of TENSOR (2-D f32, f16 or bf16) of MODEL at VERSION (a\n"
            "number or an alias, resolved once) into N lists by k-means (default about\n"
            "4 sqrt(rows), a power of two), for searches by --metric (default ip), and\n"
            "store the index with the daemon, replacing the one it had; `embcache search\n"
            "--nprobe` then scans only the lists nearest each query. Needs administrator\n"
            "rights on the daemon. Progress goes to standard error, a summary to standard\n"
            "output. info: what the tensor's index holds.\n"
            "A dynamic table's index holds its keys as they were when the build began;\n"
            "searches assign every row written since to its nearest list of the build and\n"
            "score candidates by their key's row now, so results stay right and fast as\n"
            "rows change: info shows how many were written since (\"stale\"); build again\n"
            "when the rows have drifted from the build's centroids.\n");
    return rc;
}

static const char *const PHASE[] = {"", "sample", "train", "assign", "write", "send"};

struct progress {
    bool tty;
    int last_phase;
};

static int on_progress(ec_index_phase ph, uint64_t done, uint64_t total, void *arg)
{
    struct progress *p = arg;
    const char *what = ph >= EC_INDEX_SAMPLE && ph <= EC_INDEX_SEND ? PHASE[ph] : "?";

    if (p->tty) {
        fprintf(stderr, "\r\033[Kindex build: %s %" PRIu64 "/%" PRIu64 " (%s)", what, done,
                total, ph == EC_INDEX_TRAIN ? "iterations" : ph == EC_INDEX_SEND ? "checked and stored"
                                                                                   : "rows");
        if (ph == EC_INDEX_SEND && done == total)
            fputc('\n', stderr);
    } else if (done == total && (int)ph != p->last_phase) {
        fprintf(stderr, "index build: %s done (%" PRIu64 ")\n", what, total);
        p->last_phase = (int)ph;
    }
    fflush(stderr);
    return 0;
}

static int index_build(int argc, char **argv, const char *socket_path)
{
    static const struct option o[] = {
        {"nlist", required_argument, NULL, 'n'},
        {"metric", required_argument, NULL, 'm'},
        {"iters", required_argument, NULL, 'i'},
        {"train-rows", required_argument, NULL, 'r'},
        {"seed", required_argument, NULL, 's'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *prog = "embcache index build";
    ec_index_opts io = {.metric = EC_METRIC_IP};
    ec_index_build_stats st;
    struct progress pg = {.tty = isatty(2) == 1, .last_phase = 0};
    ec_client *c = NULL;
    uint64_t v;
    char sz[32];
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "n:m:i:r:s:h", o, NULL)) != -1) {
        switch (ch) {
        case 'n':
            if (cli_parse_u64(prog, "--nlist", optarg, 1, UINT32_MAX, &v))
                return EXIT_USAGE;
            io.nlist = (uint32_t)v;
            break;
        case 'm':
            if (parse_metric(prog, optarg, &io.metric))
                return EXIT_USAGE;
            break;
        case 'i':
            if (cli_parse_u64(prog, "--iters", optarg, 1, 1000, &v))
                return EXIT_USAGE;
            io.iters = (uint32_t)v;
            break;
        case 'r':
            if (cli_parse_u64(prog, "--train-rows", optarg, 1, UINT64_MAX, &v))
                return EXIT_USAGE;
            io.train_rows = v;
            break;
        case 's':
            if (cli_parse_u64(prog, "--seed", optarg, 0, UINT64_MAX, &v))
                return EXIT_USAGE;
            io.seed = v;
            break;
        case 'h': return usage_index(stdout, EXIT_OK);
        default: return usage_index(stderr, EXIT_USAGE);
        }
    }
    if (argc - optind != 3) {
        fprintf(stderr, "%s: needs MODEL VERSION TENSOR (see 'embcache index --help')\n", prog);
        return EXIT_USAGE;
    }
    io.progress = on_progress;
    io.progress_arg = &pg;
    if ((rc = ec_client_connect(socket_path, &c)) ||
        (rc = ec_index_build(c, argv[optind], argv[optind + 1], argv[optind + 2], &io, &st))) {
        if (pg.tty)
            fputc('\n', stderr);
        ec_client_close(c);
        return cli_fail(prog, rc, NULL);
    }
    ec_client_close(c);
    cli_human_bytes(st.file_bytes, sz, sizeof(sz));
    printf("index of %s %s %s: %" PRIu64 " rows of %" PRIu64 ", metric %s, %u lists (%" PRIu64
           "..%" PRIu64 " rows each), k-means %u iterations on %" PRIu64 " rows (%" PRIu64
           " empty clusters re-seeded), %s; %.1f s (train %.1f s, assign %.1f s)\n",
           argv[optind], argv[optind + 1], argv[optind + 2], st.rows, st.dim,
           ec_metric_name(io.metric), st.nlist, st.min_list, st.max_list, st.iters,
           st.train_rows, st.reseeded, sz, st.total_s, st.train_s, st.assign_s);
    return EXIT_OK;
}

static int index_info(int argc, char **argv, const char *socket_path)
{
    const char *prog = "embcache index info";
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    ec_index_info ii;
    ec_index_staleness sn = {0};
    bool json = false, dyn;
    int rc, x;

    if ((x = cli_simple_opts(argc, argv, "usage: embcache index info MODEL VERSION TENSOR "
                                         "[--json]\n", &json)) >= 0)
        return x;
    if (argc - optind != 3) {
        fprintf(stderr, "%s: needs MODEL VERSION TENSOR\n", prog);
        return EXIT_USAGE;
    }
    if ((rc = ec_client_connect(socket_path, &c)) ||
        (rc = ec_tensor_resolve(c, argv[optind], argv[optind + 1], argv[optind + 2], &t)) ||
        (rc = ec_index_info_get(t, &ii))) {
        x = cli_fail(prog, rc, NULL);
        goto out;
    }
    dyn = ec_tensor_cache_mode(t) == EC_CACHE_DYNAMIC;
    if (dyn && (rc = ec_index_staleness_get(t, &sn))) {
        x = cli_fail(prog, rc, NULL);
        goto out;
    }
    if (json) {
        printf("{\"metric\": \"%s\", \"nlist\": %u, \"rows\": %" PRIu64 ", \"dim\": %" PRIu64
               ", \"min_list\": %" PRIu64 ", \"max_list\": %" PRIu64 ", \"file_bytes\": %" PRIu64
               ", \"train_rows\": %" PRIu64 ", \"iters\": %u, \"built_lsn\": %" PRIu64,
               ec_metric_name(ii.metric), ii.nlist, ii.rows, ii.dim, ii.min_list, ii.max_list,
               ii.file_bytes, ii.train_rows, ii.iters, ii.built_lsn);
        if (dyn)
            printf(", \"table_lsn\": %" PRIu64 ", \"live_keys\": %" PRIu64
                   ", \"stale_rows\": %" PRIu64, sn.table_lsn, sn.live_keys, sn.stale_rows);
        printf("}\n");
    } else {
        printf("metric %s, %u lists of %" PRIu64 "..%" PRIu64 " rows, %" PRIu64 " %s of %"
               PRIu64 ", %" PRIu64 " bytes, trained on %" PRIu64 " rows (%u iterations)\n",
               ec_metric_name(ii.metric), ii.nlist, ii.min_list, ii.max_list, ii.rows,
               dyn ? "keys" : "rows", ii.dim, ii.file_bytes, ii.train_rows, ii.iters);
        if (dyn)
            cli_index_staleness_line(&sn, "");
    }
    x = EXIT_OK;
out:
    ec_tensor_release(t);
    ec_client_close(c);
    return x;
}

void cli_index_staleness_line(const ec_index_staleness *sn, const char *indent)
{
    double pct = sn->live_keys ? 100.0 * (double)sn->stale_rows / (double)sn->live_keys : 0.0;

    printf("%sbuilt at lsn %" PRIu64 ", table at lsn %" PRIu64 ": %" PRIu64 " rows written "
           "since (stale: %.1f%% of %" PRIu64 " live keys)%s\n", indent, sn->built_lsn,
           sn->table_lsn, sn->stale_rows, pct, sn->live_keys,
           pct >= 10.0 ? "; every search scores them all: rebuild with `embcache index build`"
                       : "");
}

int cli_index_main(int argc, char **argv, const char *socket_path)
{
    if (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")))
        return usage_index(stdout, EXIT_OK);
    if (argc < 2 || (strcmp(argv[1], "build") && strcmp(argv[1], "info"))) {
        fprintf(stderr, "embcache index: needs build or info (see 'embcache index --help')\n");
        return EXIT_USAGE;
    }
    /* The subcommand's options come after its name: argv[1] becomes argv[0]. */
    optind = 0;
    return !strcmp(argv[1], "build") ? index_build(argc - 1, argv + 1, socket_path)
                                     : index_info(argc - 1, argv + 1, socket_path);
}
