/*
 * embcache-demo.c - the quick-start demo: generate a demo embedding table,
 * then read random rows of it through embcached, check every row, print a
 * few and report lookup latency.
 *
 *   embcache-demo generate --out FILE [--rows N] [--dim D]
 *   embcache-demo run [--socket PATH] [--model M] [--version V]
 *                     [--tensor T] [--lookups N] [--seed S]
 *
 * Row r, column c of the demo table holds demo_value(r, c), a hash of
 * (r, c) mapped to an exactly representable float in [-0.5, 0.5), so a
 * reader can check any row it gets without the source file.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "embcache.h"

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static float demo_value(uint64_t row, uint64_t col)
{
    uint64_t h = mix(row * 0x100000001b3ULL + col);
    return (float)((h >> 44) & 0xfffff) / 1048576.0f - 0.5f;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-')
        return -1;
    *out = v;
    return 0;
}

/* Write a .npy (format 1.0, little-endian f32, C order). */
static int generate(int argc, char **argv)
{
    static const struct option o[] = {
        {"out", required_argument, NULL, 'o'},
        {"rows", required_argument, NULL, 'r'},
        {"dim", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL;
    uint64_t rows = 200000, dim = 128;
    char header[128];
    size_t hl;
    FILE *f;
    float *row;
    int ch;

    while ((ch = getopt_long(argc, argv, "o:r:d:h", o, NULL)) != -1) {
        switch (ch) {
        case 'o': out = optarg; break;
        case 'r':
            if (parse_u64(optarg, &rows) || rows == 0) {
                fprintf(stderr, "embcache-demo: --rows must be a positive integer\n");
                return 2;
            }
            break;
        case 'd':
            if (parse_u64(optarg, &dim) || dim == 0 || dim > 65536) {
                fprintf(stderr, "embcache-demo: --dim must be 1..65536\n");
                return 2;
            }
            break;
        case 'h':
            printf("usage: embcache-demo generate --out FILE [--rows N] [--dim D]\n");
            return 0;
        default: return 2;
        }
    }
    if (!out) {
        fprintf(stderr, "embcache-demo generate: --out FILE is required\n");
        return 2;
    }
    snprintf(header, sizeof(header),
             "{'descr': '<f4', 'fortran_order': False, 'shape': (%" PRIu64 ", %" PRIu64 "), }",
             rows, dim);
    hl = strlen(header);
    while ((10 + hl + 1) % 64)
        header[hl++] = ' ';
    header[hl++] = '\n';
    header[hl] = '\0';
    f = fopen(out, "wb");
    if (!f) {
        fprintf(stderr, "embcache-demo: cannot create %s: %s\n", out, strerror(errno));
        return 1;
    }
    row = malloc(dim * sizeof(float));
    fwrite("\x93NUMPY\x01\x00", 1, 8, f);
    fputc((int)(hl & 0xff), f);
    fputc((int)(hl >> 8), f);
    fwrite(header, 1, hl, f);
    for (uint64_t r = 0; r < rows && row; r++) {
        for (uint64_t c = 0; c < dim; c++)
            row[c] = demo_value(r, c);
        fwrite(row, sizeof(float), dim, f);
    }
    free(row);
    if (!row || fclose(f)) {
        fprintf(stderr, "embcache-demo: writing %s failed\n", out);
        return 1;
    }
    printf("generated %s: %" PRIu64 " x %" PRIu64 " float32 (%.1f MiB)\n", out, rows, dim,
           (double)(rows * dim * 4) / 1048576.0);
    return 0;
}

static void report(const char *what, double *ns, size_t n, size_t batch)
{
    double sum = 0;

    qsort(ns, n, sizeof(*ns), cmp_double);
    for (size_t i = 0; i < n; i++)
        sum += ns[i];
    printf("  %-28s n=%-6zu p50 %8.2f us  p90 %8.2f us  p99 %8.2f us  max %8.2f us  "
           "(%.1f ns/row)\n",
           what, n, ns[n / 2] / 1e3, ns[n * 9 / 10] / 1e3, ns[n * 99 / 100] / 1e3,
           ns[n - 1] / 1e3, sum / (double)n / (double)batch);
}

static int run(int argc, char **argv)
{
    static const struct option o[] = {
        {"socket", required_argument, NULL, 's'},
        {"model", required_argument, NULL, 'm'},
        {"version", required_argument, NULL, 'v'},
        {"tensor", required_argument, NULL, 't'},
        {"lookups", required_argument, NULL, 'n'},
        {"seed", required_argument, NULL, 'S'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *sock = NULL, *model = "demo", *version = "current", *tensor = "word_embeddings";
    uint64_t lookups = 20000, seed = 42, bad = 0, checked = 0;
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    ec_tensor_info info;
    int64_t ids[256];
    float *buf = NULL;
    double *lat = NULL, t0;
    size_t dim;
    int ch, rc;

    while ((ch = getopt_long(argc, argv, "s:m:v:t:n:S:h", o, NULL)) != -1) {
        switch (ch) {
        case 's': sock = optarg; break;
        case 'm': model = optarg; break;
        case 'v': version = optarg; break;
        case 't': tensor = optarg; break;
        case 'n':
            if (parse_u64(optarg, &lookups) || lookups < 100) {
                fprintf(stderr, "embcache-demo: --lookups must be >= 100\n");
                return 2;
            }
            break;
        case 'S':
            if (parse_u64(optarg, &seed)) {
                fprintf(stderr, "embcache-demo: --seed must be an integer\n");
                return 2;
            }
            break;
        case 'h':
            printf("usage: embcache-demo run [--socket PATH] [--model M] [--version V] "
                   "[--tensor T] [--lookups N] [--seed S]\n");
            return 0;
        default: return 2;
        }
    }
    rc = ec_client_connect(sock, &c);
    if (rc == 0)
        rc = ec_tensor_resolve(c, model, version, tensor, &t);
    if (rc == 0)
        rc = ec_tensor_info_get(t, &info);
    if (rc) {
        fprintf(stderr, "embcache-demo: %s\n", ec_last_error());
        goto out;
    }
    if (info.dtype != EC_DTYPE_F32 || info.ndim != 2) {
        fprintf(stderr, "embcache-demo: %s/%s is not a 2-D float32 table\n", model, tensor);
        rc = EC_EINVAL;
        goto out;
    }
    dim = info.shape[1];
    printf("embcache-demo: %s version %" PRId64 " tensor %s: %" PRIu64 " x %zu float32, "
           "%" PRIu64 " partitions of %" PRIu64 " rows\n",
           info.model, info.version, info.tensor, info.rows, dim, info.partitions,
           info.rows_per_partition);
    buf = malloc(256 * info.row_bytes);
    lat = malloc(lookups * sizeof(*lat));
    if (!buf || !lat) {
        rc = EC_ENOMEM;
        goto out;
    }
    srand48((long)seed);

    /* 1. Cold: the first touch of each partition faults it in from disk. */
    {
        size_t nb = 0;
        for (uint64_t p = 0; p < info.partitions; p++) {
            ids[0] = (int64_t)(p * info.rows_per_partition);
            t0 = now_ns();
            rc = ec_tensor_gather(t, ids, 1, buf, info.row_bytes);
            lat[nb++] = now_ns() - t0;
            if (rc)
                break;
        }
        if (rc == 0)
            report("cold, 1 row (page-in)", lat, nb, 1);
    }
    /* 2. Warm single-row lookups and 3. warm batches of 256, all checked. */
    for (int phase = 0; phase < 2 && rc == 0; phase++) {
        size_t batch = phase == 0 ? 1 : 256, n = phase == 0 ? lookups : lookups / 50;
        for (size_t i = 0; i < n && rc == 0; i++) {
            for (size_t k = 0; k < batch; k++)
                ids[k] = (int64_t)(drand48() * (double)info.rows);
            t0 = now_ns();
            rc = ec_tensor_gather(t, ids, batch, buf, batch * info.row_bytes);
            lat[i] = now_ns() - t0;
            for (size_t k = 0; k < batch && rc == 0; k++, checked++)
                for (size_t col = 0; col < dim; col++)
                    if (buf[k * dim + col] != demo_value((uint64_t)ids[k], col)) {
                        bad++;
                        break;
                    }
        }
        if (rc == 0)
            report(phase == 0 ? "warm, 1 row" : "warm, batch of 256 rows", lat, n, batch);
    }
    if (rc) {
        fprintf(stderr, "embcache-demo: gather failed: %s\n", ec_last_error());
        goto out;
    }
    /* A few rows, as a user would see them. */
    ids[0] = 0;
    ids[1] = 1;
    ids[2] = (int64_t)info.rows - 1;
    rc = ec_tensor_gather(t, ids, 3, buf, 3 * info.row_bytes);
    for (int k = 0; k < 3 && rc == 0; k++) {
        printf("  row %-7" PRId64 " [", ids[k]);
        for (size_t col = 0; col < 6 && col < dim; col++)
            printf("%s%+.6f", col ? ", " : "", (double)buf[k * dim + col]);
        printf(", ...]\n");
    }
    printf("embcache-demo: checked %" PRIu64 " rows against the generator: %" PRIu64
           " wrong\n", checked, bad);
    if (bad)
        rc = EC_EINTERNAL;
out:
    free(buf);
    free(lat);
    ec_tensor_release(t);
    ec_client_close(c);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "generate"))
        return generate(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "run"))
        return run(argc - 1, argv + 1);
    fprintf(stderr, "usage: embcache-demo generate --out FILE [--rows N] [--dim D]\n"
                    "       embcache-demo run [--socket PATH] [--model M] [--version V] "
                    "[--tensor T] [--lookups N]\n");
    return (argc >= 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) ? 0 : 2;
}
