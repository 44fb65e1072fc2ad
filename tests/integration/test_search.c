/*
 * test_search.c - ec_search() (include/embcache_search.h) against a real
 * daemon, every answer checked against a brute-force reference computed
 * here in double precision, ids and order compared exactly:
 *
 *   1. every metric at k = 1 and 10 for 1, 4 and 300 queries (the vector
 *      kernel and the panel kernel), on 1 thread and on all, over a table of 40
 *      partitions holding 50 copies of one row (exact ties: smaller ids
 *      first);
 *   2. a table smaller than k: the results past its last row are id -1;
 *      a table of one row 3,000 times (each kernel gives every copy the
 *      same score, wherever it lies: the smallest ids win);
 *   3. f16 and bf16 tables (converted per block);
 *   4. a tensor cached by rows, larger than its budget (a streamed scan
 *      through the gather path);
 *   5. searches while other processes evict the table and fill the segment
 *      with another one whose rows would win every search: a partition
 *      that changed under the scan must be scanned again;
 *   5b. a partition damaged on disk, met by one of the search's threads
 *      (a table larger than half the segment, faulted as it is scanned):
 *      the search fails as a whole with EC_ECHECKSUM naming the block,
 *      on both kernels, and the daemon serves the table's other rows;
 *   6. bad arguments: NULL, k or nq of 0, a wrong dim, 1-D and 3-D tensors,
 *      an integer table, NaN queries, a zero cosine query, unknown metric
 *      or flags;
 *   7. `embcache search` prints what ec_search() returns.
 *
 * Each test starts its own daemon (itest.h).
 */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/dtype.h"
#include "core/partfile.h"
#include "itest.h"
#include "testutil.h"

#define ROWS 20000u
#define DIM 64u
#define PART_BYTES (128u * 1024u)   /* 512 rows: 40 partitions, the last partial */
#define NQ 300u
#define TWIN 7                      /* the row copied 50 times */
#define TWINS 50

static const ec_metric METRICS[] = {EC_METRIC_IP, EC_METRIC_COSINE, EC_METRIC_L2};

/* ------------------------------------------------------------------ */
/* Tables and queries                                                  */

static float unif(uint64_t *s)
{
    return (float)((double)(splitmix(s) >> 40) / (double)(1u << 24) * 2.0 - 1.0);
}

/* A [rows, dim] f32 table of values in [-1, 1), rows TWIN + 383 i (i = 1..TWINS)
 * copies of row TWIN when `twins`. malloc'd. */
static float *table_new(uint64_t rows, uint64_t dim, uint64_t seed, bool twins)
{
    float *x = malloc(rows * dim * sizeof(float));

    assert_non_null(x);
    for (uint64_t i = 0; i < rows * dim; i++)
        x[i] = unif(&seed);
    for (int i = 1; twins && i <= TWINS; i++)
        memcpy(x + (TWIN + 383 * (uint64_t)i) * dim, x + TWIN * dim, dim * sizeof(float));
    return x;
}

/* Queries: 0 is row TWIN (row 0 of a smaller table), 1 twice that row, 2.. rows with
 * noise or random. */
static float *queries_new(const float *x, uint64_t rows, size_t nq, uint64_t seed)
{
    float *q = malloc(nq * DIM * sizeof(float));
    const float *twin = x + (rows > TWIN ? TWIN : 0) * DIM;

    assert_non_null(q);
    for (size_t i = 0; i < nq; i++) {
        uint64_t r = splitmix(&seed) % rows;
        for (size_t j = 0; j < DIM; j++) {
            float v = unif(&seed);
            q[i * DIM + j] = i == 0 ? twin[j]
                             : i == 1 ? 2 * twin[j]
                             : i % 3 ? v : x[r * DIM + j] + 0.1f * v;
        }
    }
    return q;
}

static void import_f32(ec_client *c, const char *model, const char *name, const float *x,
                       uint64_t rows, uint64_t dim, uint64_t part_bytes)
{
    char path[600];
    uint64_t shape[2] = {rows, dim};

    snprintf(path, sizeof(path), "%s/%s.npy", E.dir, name);
    assert_int_equal(ect_write_npy_data(path, EC_DTYPE_F32, 2, shape, x), 0);
    import_npy(c, model, 1, path, part_bytes);
}

/* ------------------------------------------------------------------ */
/* The reference                                                       */

/* The score of x for q as ec_search() defines it, rounded to float as the
 * answer is (and as ties are decided); L2 negated: higher is better. */
static double exact(const float *q, const float *x, size_t dim, ec_metric m)
{
    double acc = 0, xn = 0, qn = 0;

    for (size_t j = 0; j < dim; j++) {
        if (m == EC_METRIC_L2) {
            double d = (double)q[j] - x[j];
            acc += d * d;
        } else {
            acc += (double)q[j] * x[j];
            xn += (double)x[j] * x[j];
        }
        qn += (double)q[j] * q[j];
    }
    if (m == EC_METRIC_L2)
        acc = -acc;
    else if (m == EC_METRIC_COSINE)
        acc = xn > 0 ? acc / (sqrt(qn) * sqrt(xn)) : 0.0;
    return (double)(float)acc;
}

/* The k best rows of x for q: a sorted insertion, (score desc, id asc). */
static void ref_topk(const float *x, uint64_t rows, size_t dim, const float *q, ec_metric m,
                     size_t k, double *sc, int64_t *ids)
{
    size_t n = 0;

    for (uint64_t r = 0; r < rows; r++) {
        double s = exact(q, x + r * dim, dim, m);
        size_t i;
        if (n == k && s <= sc[k - 1])
            continue; /* equal: the kept one has the smaller id */
        i = n < k ? n++ : k - 1;
        while (i > 0 && s > sc[i - 1]) {
            sc[i] = sc[i - 1];
            ids[i] = ids[i - 1];
            i--;
        }
        sc[i] = s;
        ids[i] = (int64_t)r;
    }
    for (; n < k; n++) {
        sc[n] = -INFINITY;
        ids[n] = -1;
    }
}

/* ec_search(t) against the reference over x: every id equal and in order,
 * scores within 1e-4 relative. Returns the queries checked (asserts). */
static void search_ok(ec_tensor *t, const float *x, uint64_t rows, const float *q, size_t nq,
                      size_t k, ec_metric m, uint32_t threads)
{
    ec_search_opts o = {.threads = threads};
    float *sc = malloc(nq * k * sizeof(float));
    int64_t *ids = malloc(nq * k * sizeof(int64_t)), *rid = malloc(k * sizeof(int64_t));
    double *rs = malloc(k * sizeof(double));
    int rc;

    assert_true(sc && ids && rid && rs);
    rc = ec_search(t, q, nq, DIM, k, m, &o, sc, ids);
    if (rc)
        fail_msg("ec_search(nq %zu, k %zu, %s, threads %u): %s", nq, k, ec_metric_name(m),
                 threads, ec_last_error());
    for (size_t i = 0; i < nq; i++) {
        ref_topk(x, rows, DIM, q + i * DIM, m, k, rs, rid);
        for (size_t j = 0; j < k; j++) {
            double want = m == EC_METRIC_L2 ? -rs[j] : rs[j];
            double got = sc[i * k + j];
            if (ids[i * k + j] != rid[j])
                fail_msg("%s nq %zu k %zu threads %u: query %zu rank %zu is row %lld (%.9g), "
                         "the reference says row %lld (%.9g)", ec_metric_name(m), nq, k,
                         threads, i, j, (long long)ids[i * k + j], got, (long long)rid[j],
                         want);
            if (rid[j] < 0 ? got != (m == EC_METRIC_L2 ? INFINITY : -INFINITY)
                           : fabs(got - want) > 1e-4 * fmax(1.0, fabs(want)))
                fail_msg("%s: query %zu rank %zu score %.9g, the reference says %.9g",
                         ec_metric_name(m), i, j, got, want);
        }
    }
    free(rs);
    free(rid);
    free(ids);
    free(sc);
}

/* ------------------------------------------------------------------ */
/* 1. Every metric, both kernels, ties                                 */

static void test_every_metric_vs_reference(void **state)
{
    static const char *const args[] = {"--shm-size", "64M", NULL};
    static const size_t nqs[] = {1, 4, NQ};
    float *x = table_new(ROWS, DIM, 11, true), *q = queries_new(x, ROWS, NQ, 12);
    ec_client *c;
    ec_tensor *t;
    ec_tensor_info info;

    (void)state;
    env_start("ec-search", args);
    c = connect_ok();
    import_f32(c, "m", "t", x, ROWS, DIM, PART_BYTES);
    t = resolve_ok(c, "m", "1", "t");
    assert_int_equal(ec_tensor_info_get(t, &info), 0);
    assert_true(info.partitions >= 40);
    assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_PARTITIONS);
    for (size_t mi = 0; mi < 3; mi++)
        for (size_t ni = 0; ni < 3; ni++) {
            search_ok(t, x, ROWS, q, nqs[ni], 1, METRICS[mi], 0);
            search_ok(t, x, ROWS, q, nqs[ni], 10, METRICS[mi], 0);
            search_ok(t, x, ROWS, q, nqs[ni], 10, METRICS[mi], 1);
        }
    /* The ties are there: query 0's ten best by cosine are row TWIN and its
     * first nine copies, all of score 1. */
    {
        float sc[10];
        int64_t ids[10];
        assert_int_equal(ec_search(t, q, 1, DIM, 10, EC_METRIC_COSINE, NULL, sc, ids), 0);
        for (int i = 0; i < 10; i++) {
            assert_int_equal(ids[i], TWIN + 383 * i);
            assert_true(fabsf(sc[i] - 1.0f) < 1e-6f);
        }
        assert_int_equal(ec_search(t, q + DIM, 1, DIM, 10, EC_METRIC_L2, NULL, sc, ids), 0);
        for (int i = 0; i < 10; i++)
            assert_int_equal(ids[i], TWIN + 383 * i);
    }
    /* The stored rows were searched, not something else. */
    assert_true(stat_of(c, "resident_partitions") >= info.partitions);
    ec_tensor_release(t);
    ec_client_close(c);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 2. k larger than the table                                           */

static void test_k_beyond_rows(void **state)
{
    float *x = table_new(5, DIM, 21, false), *q = queries_new(x, 5, 20, 22);
    ec_client *c;
    ec_tensor *t;

    (void)state;
    env_start("ec-search", NULL);
    c = connect_ok();
    import_f32(c, "m", "small", x, 5, DIM, PART_BYTES);
    t = resolve_ok(c, "m", "1", "small");
    for (size_t mi = 0; mi < 3; mi++) {
        search_ok(t, x, 5, q, 1, 12, METRICS[mi], 0);
        search_ok(t, x, 5, q, 20, 12, METRICS[mi], 0); /* the panel kernel */
        search_ok(t, x, 5, q, 20, 5, METRICS[mi], 0);
    }
    ec_tensor_release(t);
    ec_client_close(c);
    free(q);
    free(x);
}

/* A table of 3,000 copies of one row (ties by the thousand, in every
 * place of a panel and of a block): every query gets rows 0, 1, 2, ... in
 * order. */
static void test_all_rows_equal(void **state)
{
    float *x = table_new(3000, DIM, 23, false), *q = queries_new(x, 3000, 20, 24);
    ec_client *c;
    ec_tensor *t;

    (void)state;
    for (uint64_t r = 1; r < 3000; r++)
        memcpy(x + r * DIM, x, DIM * sizeof(float));
    env_start("ec-search", NULL);
    c = connect_ok();
    import_f32(c, "m", "same", x, 3000, DIM, PART_BYTES);
    t = resolve_ok(c, "m", "1", "same");
    for (size_t mi = 0; mi < 3; mi++) {
        search_ok(t, x, 3000, q, 20, 5, METRICS[mi], 0); /* the panel kernel */
        search_ok(t, x, 3000, q, 2, 5, METRICS[mi], 0);
    }
    ec_tensor_release(t);
    ec_client_close(c);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 3. f16 and bf16                                                     */

/* The whole tensor through ec_tensor_gather, as f32 (malloc'd). */
static float *gather_f32(ec_tensor *t, uint64_t rows, ec_dtype dt)
{
    size_t n = rows * DIM, es = ec_dtype_size(dt);
    uint16_t *raw = malloc(n * es);
    int64_t *ids = malloc(rows * sizeof(int64_t));
    float *x = malloc(n * sizeof(float));

    assert_true(raw && ids && x);
    for (uint64_t r = 0; r < rows; r++)
        ids[r] = (int64_t)r;
    assert_int_equal(ec_tensor_gather(t, ids, rows, raw, n * es), 0);
    for (size_t i = 0; i < n; i++)
        x[i] = dt == EC_DTYPE_F16 ? ec_f16_to_f32(raw[i]) : ec_bf16_to_f32(raw[i]);
    free(ids);
    free(raw);
    return x;
}

static void test_f16_bf16(void **state)
{
    static const char *const args[] = {"--shm-size", "64M", NULL};
    float *x = table_new(ROWS, DIM, 31, true), *q = queries_new(x, ROWS, 40, 32);
    uint16_t *h = malloc(ROWS * DIM * sizeof(uint16_t));
    uint64_t shape[2] = {ROWS, DIM};
    ect_st_tensor st = {.name = "b", .dtype = EC_DTYPE_BF16, .ndim = 2,
                        .shape = {ROWS, DIM}, .seed = 33};
    const char *paths[2];
    char p16[600], pbf[600];
    ec_import_opts o = {.model = "m", .version = 1, .round = -1, .partition_bytes = PART_BYTES};
    uint32_t n = 0;
    ec_client *c;

    (void)state;
    assert_non_null(h);
    env_start("ec-search", args);
    c = connect_ok();
    for (size_t i = 0; i < (size_t)ROWS * DIM; i++)
        h[i] = ec_f32_to_f16(x[i]);
    snprintf(p16, sizeof(p16), "%s/h.npy", E.dir);
    assert_int_equal(ect_write_npy_data(p16, EC_DTYPE_F16, 2, shape, h), 0);
    snprintf(pbf, sizeof(pbf), "%s/b.safetensors", E.dir);
    assert_int_equal(ect_write_safetensors(pbf, &st, 1), 0);
    paths[0] = p16;
    paths[1] = pbf;
    if (ec_model_import(c, &o, paths, 2, &n))
        fail_msg("import: %s", ec_last_error());
    for (int d = 0; d < 2; d++) {
        ec_dtype dt = d ? EC_DTYPE_BF16 : EC_DTYPE_F16;
        ec_tensor *t = resolve_ok(c, "m", "1", d ? "b" : "h");
        float *y = gather_f32(t, ROWS, dt);
        for (size_t mi = 0; mi < 3; mi++) {
            search_ok(t, y, ROWS, q, 3, 10, METRICS[mi], 0);
            search_ok(t, y, ROWS, q, 40, 10, METRICS[mi], 0);
        }
        free(y);
        ec_tensor_release(t);
    }
    ec_client_close(c);
    free(h);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 4. A tensor cached by rows                                           */

static void test_rows_streamed(void **state)
{
    /* 5 MiB of rows under a 4 MiB budget. */
    static const char *const args[] = {"--shm-size", "32M", "--budget", "4M", NULL};
    float *x = table_new(ROWS, DIM, 41, true), *q = queries_new(x, ROWS, NQ, 42);
    uint64_t reads0;
    ec_client *c;
    ec_tensor *t;

    (void)state;
    env_start("ec-search", args);
    c = connect_ok();
    import_f32(c, "m", "t", x, ROWS, DIM, PART_BYTES);
    assert_int_equal(ec_model_cache_mode(c, "m", NULL, EC_CACHE_ROWS), 0);
    t = resolve_ok(c, "m", "1", "t");
    assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_ROWS);
    reads0 = stat_of(c, "row_block_reads");
    for (size_t mi = 0; mi < 3; mi++) {
        search_ok(t, x, ROWS, q, 1, 10, METRICS[mi], 0);
        search_ok(t, x, ROWS, q, 4, 1, METRICS[mi], 0);
        search_ok(t, x, ROWS, q, NQ, 10, METRICS[mi], 0);
    }
    assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_ROWS);
    /* The rows came from the file through the item store. */
    assert_true(stat_of(c, "row_block_reads") > reads0);
    assert_int_equal(stat_of(c, "resident_partitions"), 0);
    ec_tensor_release(t);
    ec_client_close(c);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 5. Partitions that move under the scan                              */

/* Children: evict models "a" and "b" over and over, or gather rows of "b" at
 * random (which faults its partitions into the space "a" had). Until
 * killed. */
static void __attribute__((noreturn)) churner(int kind)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    uint64_t seed = 99 + (uint64_t)kind;
    int64_t ids[64];
    float *buf = malloc(64 * DIM * sizeof(float));

    if (!buf || ec_client_connect(E.sock, &c) || ec_tensor_resolve(c, "b", "1", "b", &t))
        _exit(2);
    for (;;) {
        if (kind == 0) {
            ec_model_evict(c, (seed++ & 1) ? "a" : "b", "1", NULL);
            usleep(1000);
            continue;
        }
        for (int i = 0; i < 64; i++)
            ids[i] = (int64_t)(splitmix(&seed) % (5 * ROWS / 2));
        if (ec_tensor_gather(t, ids, 64, buf, 64 * DIM * sizeof(float)))
            _exit(3);
    }
}

static void test_search_while_evicted_and_reused(void **state)
{
    /* a is 5 MiB in partitions of 1 MiB (so that a scan spends long on each),
     * b 12.8 MiB, the segment 16: they do not both fit. */
    static const char *const args[] = {"--shm-size", "16M", NULL};
    static const size_t nqs[2] = {256, 15};
    static const ec_metric ms[2] = {EC_METRIC_IP, EC_METRIC_COSINE};
    const uint64_t brows = 5 * ROWS / 2;
    float *a = table_new(ROWS, DIM, 51, false), *b = malloc(brows * DIM * sizeof(float));
    float *q = malloc(256 * DIM * sizeof(float)), *want[2], *sc = malloc(256 * 10 * 4);
    int64_t *wid[2], *ids = malloc(256 * 10 * 8);
    uint64_t seed = 52, faults0;
    ec_client *c;
    ec_tensor *t;
    pid_t kids[3];
    double end;
    int rounds = 0;

    (void)state;
    assert_true(b && q && sc && ids);
    /* Every row of b beats every row of a for these queries (IP and cosine):
     * scores read from b's bytes and kept for a's ids would be found. */
    for (size_t i = 0; i < brows * DIM; i++)
        b[i] = 3.0f + 0.001f * (float)(i % 7);
    for (size_t i = 0; i < 256 * DIM; i++)
        q[i] = 0.5f + 0.5f * unif(&seed);
    env_start("ec-search", args);
    c = connect_ok();
    import_f32(c, "a", "a", a, ROWS, DIM, 1u << 20);
    import_f32(c, "b", "b", b, brows, DIM, PART_BYTES);
    free(b);
    t = resolve_ok(c, "a", "1", "a");
    /* The answers, checked against the reference once while nothing moves;
     * under churn every search must give them again, bit for bit. */
    for (int i = 0; i < 2; i++) {
        search_ok(t, a, ROWS, q, nqs[i], 10, ms[i], 0);
        want[i] = malloc(nqs[i] * 10 * sizeof(float));
        wid[i] = malloc(nqs[i] * 10 * sizeof(int64_t));
        assert_true(want[i] && wid[i]);
        assert_int_equal(ec_search(t, q, nqs[i], DIM, 10, ms[i], NULL, want[i], wid[i]), 0);
    }
    faults0 = stat_of(c, "page_ins");
    for (int i = 0; i < 3; i++)
        if ((kids[i] = spawn()) == 0)
            churner(i == 0 ? 0 : 1);
    end = now_s() + 5.0;
    while (now_s() < end || rounds < 10) {
        int i = rounds % 2, rc = ec_search(t, q, nqs[i], DIM, 10, ms[i], NULL, sc, ids);
        if (rc)
            fail_msg("search %d under churn: %s", rounds, ec_last_error());
        for (size_t j = 0; j < nqs[i] * 10; j++)
            if (ids[j] != wid[i][j] || sc[j] != want[i][j])
                fail_msg("search %d under churn (%zu queries, %s): query %zu rank %zu is row "
                         "%lld (%g), before the churn row %lld (%g)", rounds, nqs[i],
                         ec_metric_name(ms[i]), j / 10, j % 10, (long long)ids[j],
                         (double)sc[j], (long long)wid[i][j], (double)want[i][j]);
        rounds++;
    }
    for (int i = 0; i < 3; i++) {
        kill(kids[i], SIGKILL);
        assert_int_equal(reap(kids[i]), 128 + SIGKILL);
    }
    print_message("%d searches under churn, %llu partitions read in meanwhile\n", rounds,
                  (unsigned long long)(stat_of(c, "page_ins") - faults0));
    daemon_alive();
    for (int i = 0; i < 2; i++) {
        free(want[i]);
        free(wid[i]);
    }
    ec_tensor_release(t);
    ec_client_close(c);
    free(ids);
    free(sc);
    free(q);
    free(a);
}

/* ------------------------------------------------------------------ */
/* 6. Bad arguments                                                    */

static void expect_err(int rc, int want, const char *says)
{
    if (rc != want)
        fail_msg("ec_search returned %d (%s), expected %d", rc, ec_strerror(rc), want);
    if (!strstr(ec_last_error(), says))
        fail_msg("message '%s' does not say '%s'", ec_last_error(), says);
}

/* The daemon's only partition file, opened: its path and layout. */
static void only_file(char *path, size_t cap, ec_partfile_meta *meta)
{
    char parts[700];
    struct dirent *de;
    DIR *d;
    int n = 0, fd;

    snprintf(parts, sizeof(parts), "%s/parts", E.data);
    assert_non_null(d = opendir(parts));
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l > 4 && !strcmp(de->d_name + l - 4, ".ecp")) {
            snprintf(path, cap, "%s/%s", parts, de->d_name);
            n++;
        }
    }
    closedir(d);
    assert_int_equal(n, 1);
    assert_int_equal(ec_partfile_open(path, meta, &fd), 0);
    close(fd);
}

static void test_damaged_partition_fails_the_search(void **state)
{
    /* 15 MiB in a 16 MiB segment: more than half, so the search threads
     * fault the partitions in as their scans reach them (not one request
     * before they start), and one of them meets the damage. */
    static const char *const args[] = {"--shm-size", "16M", NULL};
    const uint64_t rows = 3 * ROWS;
    float *x = table_new(rows, DIM, 71, false), *q = queries_new(x, rows, NQ, 72);
    float *sc = malloc(NQ * 10 * sizeof(float)), row[DIM];
    int64_t *ids = malloc(NQ * 10 * sizeof(int64_t)), id = 3;
    static const size_t nqs[2] = {4, NQ}; /* the vector kernel, the panel kernel */
    ec_search_opts o = {.threads = 2};
    ec_partfile_meta meta;
    char path[1000], blk[64];
    unsigned char b;
    ec_client *c;
    ec_tensor *t;
    int fd;

    (void)state;
    assert_true(sc && ids);
    env_start("ec-search", args);
    c = connect_ok();
    import_f32(c, "m", "t", x, rows, DIM, PART_BYTES);
    assert_int_equal(ec_model_evict(c, "m", "1", NULL), 0);
    /* One byte of partition 29 (of 118). */
    only_file(path, sizeof(path), &meta);
    assert_true((fd = open(path, O_RDWR)) >= 0);
    assert_int_equal(pread(fd, &b, 1, (off_t)(meta.data_off + 29 * meta.stride + 1000)), 1);
    b ^= 0x10;
    assert_int_equal(pwrite(fd, &b, 1, (off_t)(meta.data_off + 29 * meta.stride + 1000)), 1);
    close(fd);
    /* Read by 4 KiB blocks, each checked: the message names the block. */
    snprintf(blk, sizeof(blk), "block %llu ",
             (unsigned long long)((29 * meta.stride + 1000) / EC_PARTFILE_BLOCK));
    t = resolve_ok(c, "m", "1", "t");
    for (int k = 0; k < 2; k++) {
        int rc = ec_search(t, q, nqs[k], DIM, 10, EC_METRIC_IP, &o, sc, ids);
        if (rc != EC_ECHECKSUM || !strstr(ec_last_error(), blk))
            fail_msg("search of %zu queries over a damaged partition: %s (%s), expected "
                     "EC_ECHECKSUM naming its %s", nqs[k], ec_strerror(rc), ec_last_error(),
                     blk);
    }
    /* The rest of the table is served. */
    assert_int_equal(ec_tensor_gather(t, &id, 1, row, sizeof(row)), 0);
    assert_memory_equal(row, x + 3 * DIM, sizeof(row));
    ec_tensor_release(t);
    ec_client_close(c);
    free(ids);
    free(sc);
    free(q);
    free(x);
}

static void test_bad_args(void **state)
{
    float *x = table_new(100, DIM, 61, false), q[2 * DIM] = {0}, sc[20];
    float v1[100], v3[10 * 4 * 8];
    int32_t vi[100 * 8] = {0};
    uint64_t s1[1] = {100}, s3[3] = {10, 4, 8}, si[2] = {100, 8};
    char p1[600], p3[600], pi[600];
    const char *paths[3] = {p1, p3, pi};
    ec_import_opts o = {.model = "bad", .version = 1, .round = -1};
    ec_search_opts so = {.flags = 4};
    uint32_t n;
    int64_t ids[20];
    ec_client *c;
    ec_tensor *t, *t1, *t3, *ti;

    (void)state;
    memset(v1, 0, sizeof(v1));
    memset(v3, 0, sizeof(v3));
    env_start("ec-search", NULL);
    c = connect_ok();
    import_f32(c, "m", "t", x, 100, DIM, PART_BYTES);
    snprintf(p1, sizeof(p1), "%s/v1.npy", E.dir);
    snprintf(p3, sizeof(p3), "%s/v3.npy", E.dir);
    snprintf(pi, sizeof(pi), "%s/vi.npy", E.dir);
    assert_int_equal(ect_write_npy_data(p1, EC_DTYPE_F32, 1, s1, v1), 0);
    assert_int_equal(ect_write_npy_data(p3, EC_DTYPE_F32, 3, s3, v3), 0);
    assert_int_equal(ect_write_npy_data(pi, EC_DTYPE_I32, 2, si, vi), 0);
    if (ec_model_import(c, &o, paths, 3, &n))
        fail_msg("import: %s", ec_last_error());
    t = resolve_ok(c, "m", "1", "t");
    t1 = resolve_ok(c, "bad", "1", "v1");
    t3 = resolve_ok(c, "bad", "1", "v3");
    ti = resolve_ok(c, "bad", "1", "vi");
    q[0] = 1;
    q[DIM] = 1;

    expect_err(ec_search(NULL, q, 1, DIM, 1, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL, "tensor");
    expect_err(ec_search(t, NULL, 1, DIM, 1, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL, "queries");
    expect_err(ec_search(t, q, 1, DIM, 1, EC_METRIC_IP, NULL, NULL, ids), EC_EINVAL, "scores");
    expect_err(ec_search(t, q, 1, DIM, 1, EC_METRIC_IP, NULL, sc, NULL), EC_EINVAL, "ids");
    expect_err(ec_search(t, q, 1, DIM, 0, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL, "k is 0");
    expect_err(ec_search(t, q, 0, DIM, 1, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL, "nq is 0");
    expect_err(ec_search(t, q, 1, DIM - 1, 1, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL,
               "queries have 63 floats");
    expect_err(ec_search(t, q, 1, DIM, 1, (ec_metric)0, NULL, sc, ids), EC_EINVAL,
               "unknown metric");
    expect_err(ec_search(t, q, 1, DIM, 1, (ec_metric)4, NULL, sc, ids), EC_EINVAL,
               "unknown metric");
    expect_err(ec_search(t, q, 1, DIM, 1, EC_METRIC_IP, &so, sc, ids), EC_EINVAL,
               "unknown flags");
    expect_err(ec_search(t1, q, 1, 100, 1, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL,
               "1 dimension(s), and search needs a 2-D");
    expect_err(ec_search(t3, q, 1, 8, 1, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL,
               "3 dimension(s), and search needs a 2-D");
    expect_err(ec_search(ti, q, 1, 8, 1, EC_METRIC_IP, NULL, sc, ids), EC_EDTYPE,
               "its dtype is i32");
    q[DIM + 5] = NAN;
    expect_err(ec_search(t, q, 2, DIM, 1, EC_METRIC_IP, NULL, sc, ids), EC_EINVAL,
               "query 1, value 5 is NaN");
    q[DIM + 5] = INFINITY;
    expect_err(ec_search(t, q, 2, DIM, 1, EC_METRIC_L2, NULL, sc, ids), EC_EINVAL,
               "infinite");
    q[DIM + 5] = 0;
    q[DIM] = 0;
    expect_err(ec_search(t, q, 2, DIM, 1, EC_METRIC_COSINE, NULL, sc, ids), EC_EINVAL,
               "query 1 is all zeros");
    /* ... which IP and L2 take. */
    assert_int_equal(ec_search(t, q, 2, DIM, 1, EC_METRIC_L2, NULL, sc, ids), 0);
    assert_string_equal(ec_metric_name(EC_METRIC_COSINE), "cosine");
    assert_null(ec_metric_name((ec_metric)9));
    ec_tensor_release(ti);
    ec_tensor_release(t3);
    ec_tensor_release(t1);
    ec_tensor_release(t);
    ec_client_close(c);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 7. The CLI                                                          */

static void test_cli_search(void **state)
{
    float *x = table_new(2000, DIM, 71, false), *q = queries_new(x, 2000, 3, 72), sc[15];
    uint64_t shape[2] = {3, DIM};
    char qp[600], cmd[2048], line[256];
    int64_t ids[15];
    int lines = 0;
    ec_client *c;
    ec_tensor *t;
    FILE *p;

    (void)state;
    env_start("ec-search", NULL);
    c = connect_ok();
    import_f32(c, "m", "t", x, 2000, DIM, PART_BYTES);
    assert_int_equal(ec_model_alias(c, "m", "current", 1), 0); /* the CLI's default */
    t = resolve_ok(c, "m", "1", "t");
    assert_int_equal(ec_search(t, q, 3, DIM, 5, EC_METRIC_L2, NULL, sc, ids), 0);
    snprintf(qp, sizeof(qp), "%s/q.npy", E.dir);
    assert_int_equal(ect_write_npy_data(qp, EC_DTYPE_F32, 2, shape, q), 0);
    snprintf(cmd, sizeof(cmd), "%s --socket %s search m t --query %s -k 5 --metric l2",
             EC_TEST_CLI, E.sock, qp);
    p = popen(cmd, "r");
    assert_non_null(p);
    while (fgets(line, sizeof(line), p)) {
        unsigned qi, rank;
        long long id;
        double s;
        assert_int_equal(sscanf(line, "%u\t%u\t%lld\t%lf", &qi, &rank, &id, &s), 4);
        assert_true(qi < 3 && rank >= 1 && rank <= 5);
        assert_int_equal(id, ids[qi * 5 + rank - 1]);
        assert_true((float)s == sc[qi * 5 + rank - 1]);
        lines++;
    }
    assert_int_equal(pclose(p), 0);
    assert_int_equal(lines, 15);
    /* A wrong dimension is refused with the usage exit code and a message. */
    snprintf(cmd, sizeof(cmd), "%s --socket %s search m t --query %s --version 1 -k 0 "
             "2>/dev/null", EC_TEST_CLI, E.sock, qp);
    assert_int_equal(WEXITSTATUS(system(cmd)), 2);
    ec_tensor_release(t);
    ec_client_close(c);
    free(q);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_every_metric_vs_reference, env_teardown),
        cmocka_unit_test_teardown(test_k_beyond_rows, env_teardown),
        cmocka_unit_test_teardown(test_all_rows_equal, env_teardown),
        cmocka_unit_test_teardown(test_f16_bf16, env_teardown),
        cmocka_unit_test_teardown(test_rows_streamed, env_teardown),
        cmocka_unit_test_teardown(test_search_while_evicted_and_reused, env_teardown),
        cmocka_unit_test_teardown(test_damaged_partition_fails_the_search, env_teardown),
        cmocka_unit_test_teardown(test_bad_args, env_teardown),
        cmocka_unit_test_teardown(test_cli_search, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
