/*
 * cli_search.c - `embcache search`: exact top-k over a tensor, for queries
 * read from a .npy file, through ec_search() (include/embcache_search.h).
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

static int usage_search(FILE *f, int rc)
{
    fprintf(f,
            "usage: embcache search MODEL TENSOR --query FILE.npy [-k N] [--metric ip|cosine|l2]\n"
            "                       [--version V] [--threads T] [--json]\n"
            "Exact top-k rows of TENSOR (a 2-D f32, f16 or bf16 tensor of MODEL, at version\n"
            "V or an alias, default 'current') for each query in FILE.npy (float32 or\n"
            "float64, shape [dim] or [queries, dim]), computed in this process over the\n"
            "shared segment. -k: results per query (default 10). --metric: inner product\n"
            "(default), cosine, or squared L2 distance (lowest first). Prints one line per\n"
            "result: query, rank, row id, score; --json prints one object per query.\n");
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

    while ((ch = getopt_long(argc, argv, "q:k:m:v:t:jh", o, NULL)) != -1) {
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
        case 'm':
            if (!strcmp(optarg, "ip") || !strcmp(optarg, "dot"))
                metric = EC_METRIC_IP;
            else if (!strcmp(optarg, "cosine") || !strcmp(optarg, "cos"))
                metric = EC_METRIC_COSINE;
            else if (!strcmp(optarg, "l2"))
                metric = EC_METRIC_L2;
            else {
                fprintf(stderr, "embcache search: unknown metric '%s' (ip, cosine, l2)\n",
                        optarg);
                return EXIT_USAGE;
            }
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
