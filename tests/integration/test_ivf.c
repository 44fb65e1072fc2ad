/*
 * test_ivf.c - approximate search through a tensor's IVF-Flat index
 * (ec_index_build, ec_search with opts.nprobe, INDEX_PUT / INDEX_OPEN)
 * against a real daemon, checked against exact ec_search on the same
 * tensor:
 *
 *   1. a clustered table (20,000 x 64, a Gaussian mixture of 40 centres),
 *      an index per metric (IP, cosine, L2): recall@10 >= 0.9 at nprobe 16
 *      of 512 lists, for 1 query per call and 100, on 1 thread and on all,
 *      and less at nprobe 4 and less again at 1;
 *      at nprobe = nlist (and beyond) exactly the exact answer, ids and
 *      scores; every row found has exactly its exact score; an f16 table;
 *   2. files sent with INDEX_PUT that are truncated, corrupted (a checksum,
 *      the header) or well sealed but wrong (ids twice or out of range,
 *      offsets that decrease or end elsewhere, a section out of the file,
 *      another tensor's names, a size that is not the file's, a pipe) are
 *      refused with EC_EFORMAT and a message naming the fault; the stored
 *      index stays as it was, no temporary file is left, the daemon serves;
 *   3. errors: no index (EC_ENOENT), an index of another metric
 *      (EC_EINVAL), bad build arguments, a build stopped by its progress
 *      callback; k past the rows of the probed lists (id -1 padding); more
 *      queries than one chunk of the search;
 *   4. retiring a version removes its index file and not another's; an
 *      index survives a restart of the daemon;
 *   5. many threads' first searches on one handle (the index is mapped
 *      once per handle, by whichever thread wins);
 *   6. `embcache index build|info` and `embcache search --nprobe`;
 *   7. a dynamic table's index (keys any int64): recall per metric; new
 *      keys, rows moved and keys deleted after the build are found, scored
 *      as their rows are now, and never returned, respectively; staleness
 *      (API, `index info`, `stats`); kill -9 keeps the index and the slots'
 *      lsns; a rebuild resets staleness; an index built before the tensor
 *      became dynamic is refused, and so are keyed files that repeat a key
 *      or were built past the table's lsn, and an index of rows for it.
 *
 * Each test starts its own daemon (itest.h).
 */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "client/client_impl.h"
#include "common/dtype.h"
#include "common/ivffile.h"
#include "itest.h"
#include "shm/dyntable.h"
#include "testutil.h"

#define ROWS 20000u
#define DIM 64u
#define CENTRES 40u
#define NQ 100u
#define K 10u
#define PART_BYTES (128u * 1024u)
#define NLIST 512u                /* what the default gives for 20,000 rows */

static const ec_metric METRICS[] = {EC_METRIC_IP, EC_METRIC_COSINE, EC_METRIC_L2};

/* ------------------------------------------------------------------ */
/* Data                                                                */

static float gauss(uint64_t *s)
{
    double u1 = ((double)(splitmix(s) >> 11) + 1.0) / 9007199254740993.0;
    double u2 = (double)(splitmix(s) >> 11) / 9007199254740992.0;

    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

/* rows x DIM points of a mixture of CENTRES Gaussians (centres N(0, 1),
 * spread sigma), and, when q is not NULL, nq queries drawn the same way. */
static float *mixture(uint64_t rows, uint64_t seed, float sigma, float **q, size_t nq)
{
    float *c = malloc(CENTRES * DIM * sizeof(float)), *x = malloc(rows * DIM * sizeof(float));
    uint64_t s = seed;

    assert_true(c && x);
    for (size_t i = 0; i < CENTRES * DIM; i++)
        c[i] = gauss(&s);
    for (uint64_t r = 0; r < rows; r++) {
        const float *cc = c + (splitmix(&s) % CENTRES) * DIM;
        for (size_t j = 0; j < DIM; j++)
            x[r * DIM + j] = cc[j] + sigma * gauss(&s);
    }
    if (q) {
        *q = malloc(nq * DIM * sizeof(float));
        assert_non_null(*q);
        for (size_t i = 0; i < nq; i++) {
            const float *cc = c + (splitmix(&s) % CENTRES) * DIM;
            for (size_t j = 0; j < DIM; j++)
                (*q)[i * DIM + j] = cc[j] + sigma * gauss(&s);
        }
    }
    free(c);
    return x;
}

/* <dir>/v<version>/<name>.npy: the tensor is named <name>. */
static void write_table(char *path, size_t cap, int64_t version, const char *name, ec_dtype dt,
                        const void *x, uint64_t rows)
{
    uint64_t shape[2] = {rows, DIM};

    snprintf(path, cap, "%s/v%lld", E.dir, (long long)version);
    (void)mkdir(path, 0700);
    snprintf(path, cap, "%s/v%lld/%s.npy", E.dir, (long long)version, name);
    assert_int_equal(ect_write_npy_data(path, dt, 2, shape, x), 0);
}

static void import_paths(ec_client *c, const char *model, int64_t version,
                         const char *const *paths, size_t n)
{
    ec_import_opts o = {.model = model, .version = version, .round = -1,
                        .partition_bytes = PART_BYTES};
    uint32_t got = 0;

    if (ec_model_import(c, &o, paths, n, &got))
        fail_msg("import of version %lld: %s", (long long)version, ec_last_error());
}

static void import_table(ec_client *c, const char *model, int64_t version, const char *name,
                         ec_dtype dt, const void *x, uint64_t rows)
{
    char path[600];
    const char *paths[1] = {path};

    write_table(path, sizeof(path), version, name, dt, x, rows);
    import_paths(c, model, version, paths, 1);
}

static void build_ok(ec_client *c, const char *model, const char *version, const char *tensor,
                     ec_metric m, uint32_t nlist, ec_index_build_stats *st)
{
    ec_index_opts o = {.metric = m, .nlist = nlist};
    ec_index_build_stats s;

    if (ec_index_build(c, model, version, tensor, &o, &s))
        fail_msg("ec_index_build(%s %s %s, %s): %s", model, version, tensor,
                 ec_metric_name(m), ec_last_error());
    if (st)
        *st = s;
}

/* ------------------------------------------------------------------ */
/* Checks                                                              */

struct answer {
    float *sc;
    int64_t *id;
};

static struct answer search_ok(ec_tensor *t, const float *q, size_t nq, size_t k, ec_metric m,
                               uint32_t nprobe, uint32_t threads)
{
    ec_search_opts o = {.threads = threads, .nprobe = nprobe};
    struct answer a = {malloc(nq * k * sizeof(float)), malloc(nq * k * sizeof(int64_t))};

    assert_true(a.sc && a.id);
    if (ec_search(t, q, nq, DIM, k, m, &o, a.sc, a.id))
        fail_msg("ec_search(nq %zu, k %zu, %s, nprobe %u, threads %u): %s", nq, k,
                 ec_metric_name(m), nprobe, threads, ec_last_error());
    return a;
}

static void answer_free(struct answer a)
{
    free(a.sc);
    free(a.id);
}

/* The same queries one call each. */
static struct answer search_singly(ec_tensor *t, const float *q, size_t nq, size_t k,
                                   ec_metric m, uint32_t nprobe)
{
    struct answer a = {malloc(nq * k * sizeof(float)), malloc(nq * k * sizeof(int64_t))};

    assert_true(a.sc && a.id);
    for (size_t i = 0; i < nq; i++) {
        struct answer one = search_ok(t, q + i * DIM, 1, k, m, nprobe, 1);
        memcpy(a.sc + i * k, one.sc, k * sizeof(float));
        memcpy(a.id + i * k, one.id, k * sizeof(int64_t));
        answer_free(one);
    }
    return a;
}

/* Recall of approx against exact (k results per query); asserts that the
 * ids of a query are distinct and best first, and that a row found by both
 * has the same score in both. */
static double recall_of(struct answer ap, struct answer ex, size_t nq, size_t k, ec_metric m)
{
    size_t hit = 0;

    for (size_t q = 0; q < nq; q++) {
        const int64_t *a = ap.id + q * k, *e = ex.id + q * k;
        const float *as = ap.sc + q * k, *es = ex.sc + q * k;
        for (size_t i = 0; i < k; i++) {
            if (a[i] == -1)
                continue; /* padding (a dynamic table's keys may be negative) */
            for (size_t j = 0; j < i; j++)
                if (a[j] == a[i])
                    fail_msg("query %zu: row %lld found twice", q, (long long)a[i]);
            if (i && (m == EC_METRIC_L2 ? as[i] < as[i - 1] : as[i] > as[i - 1]))
                fail_msg("query %zu: results not best first at rank %zu", q, i);
            for (size_t j = 0; j < k; j++)
                if (e[j] == a[i]) {
                    hit++;
                    if (as[i] != es[j])
                        fail_msg("%s query %zu: row %lld scores %.9g approximately and "
                                 "%.9g exactly", ec_metric_name(m), q, (long long)a[i],
                                 (double)as[i], (double)es[j]);
                }
        }
    }
    return (double)hit / (double)(nq * k);
}

static void same_answer(struct answer a, struct answer b, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        if (a.id[i] != b.id[i] || a.sc[i] != b.sc[i])
            fail_msg("%s: result %zu is row %lld (%.9g) and row %lld (%.9g)", what, i,
                     (long long)a.id[i], (double)a.sc[i], (long long)b.id[i], (double)b.sc[i]);
}

/* ------------------------------------------------------------------ */
/* 1. Recall, every metric                                             */

#define MODERATE 16   /* of 512 lists: about 3% of the rows scanned */

static void recall_checks(ec_tensor *t, const float *q, ec_metric m, uint32_t nlist,
                          const char *what)
{
    struct answer ex = search_ok(t, q, NQ, K, m, 0, 0);
    struct answer a1 = search_ok(t, q, NQ, K, m, MODERATE, 1);
    struct answer a0 = search_ok(t, q, NQ, K, m, MODERATE, 0);
    struct answer as = search_singly(t, q, NQ, K, m, MODERATE);
    struct answer all = search_ok(t, q, NQ, K, m, nlist, 0);
    struct answer more = search_ok(t, q, NQ, K, m, 1000000, 1);
    struct answer few = search_ok(t, q, NQ, K, m, 4, 0);
    struct answer one = search_ok(t, q, NQ, K, m, 1, 0);
    double r1 = recall_of(a1, ex, NQ, K, m), rs = recall_of(as, ex, NQ, K, m);
    double rf = recall_of(few, ex, NQ, K, m), ro = recall_of(one, ex, NQ, K, m);

    print_message("%s %s: recall@10 %.3f (nprobe 1), %.3f (4), %.3f (%d, batch), %.3f (%d, "
                  "one query per call), %.3f (nprobe = nlist = %u)\n", what, ec_metric_name(m),
                  ro, rf, r1, MODERATE, rs, MODERATE, recall_of(all, ex, NQ, K, m), nlist);
    if (r1 < 0.9 || rs < 0.9)
        fail_msg("%s %s: recall@10 at nprobe %d of %u is %.3f (batch) and %.3f (single): "
                 "below 0.9", what, ec_metric_name(m), MODERATE, nlist, r1, rs);
    /* Fewer lists, fewer rows found: the lists are searched, not the table. */
    if (!(ro < rf && rf < r1) || ro > 0.5)
        fail_msg("%s %s: recall %.3f, %.3f, %.3f at nprobe 1, 4, %d: not an approximate "
                 "search of the nearest lists", what, ec_metric_name(m), ro, rf, r1, MODERATE);
    /* Threads change nothing: the candidates are the best keys, ties by id. */
    same_answer(a1, a0, NQ * K, "nprobe 16 on 1 thread and on all");
    /* Every list probed: the exact answer, bit for bit. */
    same_answer(all, ex, NQ * K, "nprobe = nlist against exact");
    same_answer(more, ex, NQ * K, "nprobe > nlist against exact");
    answer_free(ex);
    answer_free(a1);
    answer_free(a0);
    answer_free(as);
    answer_free(all);
    answer_free(more);
    answer_free(few);
    answer_free(one);
}

static void test_recall_every_metric(void **state)
{
    static const char *const args[] = {"--shm-size", "64M", NULL};
    float *q, *x = mixture(ROWS, 1, 1.0f, &q, NQ);
    uint16_t *h = malloc(ROWS * DIM * sizeof(uint16_t));
    ec_client *c;

    (void)state;
    assert_non_null(h);
    env_start("ec-index", args);
    c = connect_ok();
    import_table(c, "m", 1, "t", EC_DTYPE_F32, x, ROWS);
    for (size_t mi = 0; mi < 3; mi++) {
        ec_index_build_stats st;
        ec_index_info ii;
        ec_tensor *t;
        build_ok(c, "m", "1", "t", METRICS[mi], 0, &st);
        assert_int_equal(st.nlist, NLIST);
        assert_int_equal(st.rows, ROWS);
        assert_int_equal(st.dim, DIM);
        assert_int_equal(st.iters, 10);
        assert_int_equal(st.train_rows, ROWS); /* min(rows, 64 nlist) */
        assert_true(st.max_list < ROWS / 4 && st.file_bytes > ROWS * DIM * 4);
        /* A handle keeps the index it first mapped: a new one per build. */
        t = resolve_ok(c, "m", "1", "t");
        assert_int_equal(ec_index_info_get(t, &ii), 0);
        assert_int_equal(ii.metric, METRICS[mi]);
        assert_int_equal(ii.nlist, NLIST);
        assert_int_equal(ii.rows, ROWS);
        assert_int_equal(ii.dim, DIM);
        assert_int_equal(ii.file_bytes, st.file_bytes);
        assert_int_equal(ii.min_list, st.min_list);
        assert_int_equal(ii.max_list, st.max_list);
        assert_int_equal(ii.built_lsn, 0);
        recall_checks(t, q, METRICS[mi], NLIST, "f32");
        ec_tensor_release(t);
    }
    /* An f16 table: rows converted to f32 in the index, scores from the
     * stored f16 rows. Fewer lists, chosen. */
    for (size_t i = 0; i < (size_t)ROWS * DIM; i++)
        h[i] = ec_f32_to_f16(x[i]);
    import_table(c, "m", 2, "h", EC_DTYPE_F16, h, ROWS);
    {
        ec_tensor *t;
        build_ok(c, "m", "2", "h", EC_METRIC_COSINE, 256, NULL);
        t = resolve_ok(c, "m", "2", "h");
        recall_checks(t, q, EC_METRIC_COSINE, 256, "f16");
        ec_tensor_release(t);
    }
    daemon_alive();
    ec_client_close(c);
    free(h);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 2. Bad files                                                        */

/* The stored index file's path (the only <id>.ivf in indexes/), and no
 * temporary file beside it. */
static void index_path(char *out, size_t cap, int want_files)
{
    char dir[600];
    struct dirent *de;
    DIR *d;
    int n = 0;

    snprintf(dir, sizeof(dir), "%s/indexes", E.data);
    d = opendir(dir);
    if (!d) {
        assert_int_equal(want_files, 0);
        return;
    }
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' && strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
            fail_msg("a temporary file was left in indexes/: %s", de->d_name);
        if (strstr(de->d_name, ".ivf") && de->d_name[0] != '.') {
            if (out)
                snprintf(out, cap, "%s/%.40s", dir, de->d_name); /* <id>.ivf */
            n++;
        }
    }
    closedir(d);
    assert_int_equal(n, want_files);
}

static uint8_t *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *b;
    long n;

    assert_non_null(f);
    assert_int_equal(fseek(f, 0, SEEK_END), 0);
    n = ftell(f);
    rewind(f);
    b = malloc((size_t)n);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

/* INDEX_PUT of len bytes of buf (announced as `announced` bytes), or of fd
 * when fd >= 0. */
static int put_raw(ec_client *c, const char *tensor, const void *buf, size_t len,
                   uint64_t announced, int fd)
{
    ec_rbuf body;
    ec_wbuf w;
    uint32_t id;
    int rc;

    if (fd < 0) {
        fd = memfd_create("test-index", MFD_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, buf, len), (ssize_t)len);
    }
    pthread_mutex_lock(&c->lock);
    id = cl_begin(c, &w, EC_OP_INDEX_PUT);
    ec_put_str(&w, "m");
    ec_put_i64(&w, 1);
    ec_put_str(&w, tensor);
    ec_put_u64(&w, announced);
    rc = cl_rpc(c, &w, id, &fd, 1, &body, NULL, NULL, 0);
    pthread_mutex_unlock(&c->lock);
    close(fd);
    return rc;
}

enum tamper {
    T_NONE, T_TRUNC, T_VEC_BYTE, T_HDR_BYTE, T_ID_TWICE, T_ID_RANGE, T_OFF_DOWN, T_OFF_END,
    T_SEC_OUT, T_OTHER_TENSOR, T_BIG, T_NAME, T_N_
};

static const struct {
    const char *name, *says;
} TAMPER[T_N_] = {
    [T_NONE] = {"the valid file", NULL},
    [T_TRUNC] = {"truncated by 100 bytes", "ends past the end of the file"},
    [T_VEC_BYTE] = {"a vector byte flipped", "section vectors failed its checksum"},
    [T_HDR_BYTE] = {"a header byte flipped", "header checksum mismatch"},
    [T_ID_TWICE] = {"an id twice (resealed)", "appears twice"},
    [T_ID_RANGE] = {"an id out of range (resealed)", "is outside [0, 20000)"},
    [T_OFF_DOWN] = {"offsets that decrease (resealed)", "list offsets decrease"},
    [T_OFF_END] = {"offsets ending short of rows (resealed)", "list offsets run from"},
    [T_SEC_OUT] = {"sections that overlap (resealed)", "section norms at offset"},
    [T_OTHER_TENSOR] = {"another tensor's name (resealed)", "not of tensor id"},
    [T_BIG] = {"rows doubled (resealed)", "section ids is 160000 bytes; 40000 rows"},
    [T_NAME] = {"an unterminated name (resealed)", "unterminated"},
};

static void tamper(uint8_t *f, size_t *len, enum tamper how)
{
    ec_ivf_header *h = (ec_ivf_header *)(void *)f;
    uint64_t *offs = (uint64_t *)(void *)(f + h->sec[EC_IVF_OFFSETS].offset);
    int64_t *ids = (int64_t *)(void *)(f + h->sec[EC_IVF_IDS].offset);
    bool reseal = true;

    switch (how) {
    case T_NONE: reseal = false; break;
    case T_TRUNC: *len -= 100; reseal = false; break;
    case T_VEC_BYTE: f[h->sec[EC_IVF_VECTORS].offset + 4001] ^= 0x40; reseal = false; break;
    case T_HDR_BYTE: h->rows ^= 1; reseal = false; break;
    case T_ID_TWICE: ids[17] = ids[18]; break;
    case T_ID_RANGE: ids[5] = ROWS; break;
    case T_OFF_DOWN: offs[3] = offs[4] + 1; break;
    case T_OFF_END: offs[NLIST] = ROWS - 1; break;
    case T_SEC_OUT: h->sec[EC_IVF_NORMS].offset -= 64; break;
    case T_OTHER_TENSOR: snprintf(h->tensor, sizeof(h->tensor), "u"); break;
    case T_BIG: h->rows = 2 * ROWS; break;
    case T_NAME: memset(h->model, 'x', sizeof(h->model)); break;
    case T_N_: break;
    }
    if (reseal)
        ec_ivf_seal(f, *len);
}

static void test_bad_files_refused(void **state)
{
    float *q, *x = mixture(ROWS, 2, 0.35f, &q, NQ);
    char path[1200];
    uint8_t *good, *f;
    size_t glen;
    struct answer before;
    ec_client *c;
    ec_tensor *t;
    int p[2];

    (void)state;
    env_start("ec-index", NULL);
    c = connect_ok();
    {
        char pt[600], pu[600];
        const char *paths[2] = {pt, pu};
        write_table(pt, sizeof(pt), 1, "t", EC_DTYPE_F32, x, ROWS);
        write_table(pu, sizeof(pu), 1, "u", EC_DTYPE_F32, x, ROWS);
        import_paths(c, "m", 1, paths, 2);
    }
    index_path(NULL, 0, 0);
    build_ok(c, "m", "1", "t", EC_METRIC_L2, NLIST, NULL);
    index_path(path, sizeof(path), 1);
    good = read_file(path, &glen);
    t = resolve_ok(c, "m", "1", "t");
    before = search_ok(t, q, NQ, K, EC_METRIC_L2, 8, 0);
    ec_tensor_release(t);
    f = malloc(glen);
    assert_non_null(f);
    for (int how = 0; how < T_N_; how++) {
        size_t len = glen;
        int rc;
        memcpy(f, good, glen);
        tamper(f, &len, (enum tamper)how);
        rc = put_raw(c, "t", f, len, len, -1);
        if (how == T_NONE) {
            if (rc)
                fail_msg("the valid file was refused: %s", ec_last_error());
            continue;
        }
        if (rc != EC_EFORMAT || !strstr(ec_last_error(), TAMPER[how].says))
            fail_msg("%s: INDEX_PUT returned %d (%s), expected EC_EFORMAT saying '%s'",
                     TAMPER[how].name, rc, ec_last_error(), TAMPER[how].says);
        print_message("refused, %s: %s\n", TAMPER[how].name, ec_last_error());
    }
    /* A size that is not the file's, and a descriptor that is not a file. */
    assert_int_equal(put_raw(c, "t", good, glen, glen + 64, -1), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "the request says"));
    assert_int_equal(pipe(p), 0);
    assert_int_equal(put_raw(c, "t", NULL, 0, glen, p[0]), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "not a regular file"));
    close(p[1]);
    /* The valid file of t, sent as u's index: it names another tensor. */
    assert_int_equal(put_raw(c, "u", good, glen, glen, -1), EC_EFORMAT);
    assert_non_null(strstr(ec_last_error(), "not of tensor id"));
    /* Nothing changed, nothing left behind, still serving. */
    index_path(path, sizeof(path), 1);
    {
        size_t n;
        uint8_t *now = read_file(path, &n);
        assert_int_equal(n, glen);
        assert_memory_equal(now, good, glen);
        free(now);
    }
    daemon_alive();
    t = resolve_ok(c, "m", "1", "t");
    {
        struct answer after = search_ok(t, q, NQ, K, EC_METRIC_L2, 8, 0);
        same_answer(before, after, NQ * K, "before and after the bad files");
        answer_free(after);
    }
    ec_tensor_release(t);
    answer_free(before);
    ec_client_close(c);
    free(f);
    free(good);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 3. Errors                                                           */

static void expect(int rc, int want, const char *says)
{
    if (rc != want)
        fail_msg("returned %d (%s), expected %d", rc, ec_last_error(), want);
    if (!strstr(ec_last_error(), says))
        fail_msg("message '%s' does not say '%s'", ec_last_error(), says);
}

static int stop_at_train(ec_index_phase ph, uint64_t done, uint64_t total, void *arg)
{
    (void)done;
    (void)total;
    (*(int *)arg)++;
    return ph == EC_INDEX_TRAIN;
}

static void test_errors(void **state)
{
    float *q, *x = mixture(2000, 3, 0.35f, &q, 4), v1[100] = {0};
    int32_t vi[100 * 8] = {0};
    uint64_t s1[1] = {100}, si[2] = {100, 8};
    char p1[600], pi[600];
    const char *paths[2] = {p1, pi};
    ec_import_opts io = {.model = "bad", .version = 1, .round = -1};
    ec_index_opts o = {0};
    ec_search_opts so = {.nprobe = 4};
    float sc[600];
    int64_t ids[600];
    uint32_t n;
    int calls = 0;
    ec_client *c;
    ec_tensor *t;

    (void)state;
    env_start("ec-index", NULL);
    c = connect_ok();
    import_table(c, "m", 1, "t", EC_DTYPE_F32, x, 2000);
    snprintf(p1, sizeof(p1), "%s/v1.npy", E.dir);
    snprintf(pi, sizeof(pi), "%s/vi.npy", E.dir);
    assert_int_equal(ect_write_npy_data(p1, EC_DTYPE_F32, 1, s1, v1), 0);
    assert_int_equal(ect_write_npy_data(pi, EC_DTYPE_I32, 2, si, vi), 0);
    if (ec_model_import(c, &io, paths, 2, &n))
        fail_msg("import: %s", ec_last_error());
    t = resolve_ok(c, "m", "1", "t");

    /* No index yet. */
    expect(ec_search(t, q, 1, DIM, K, EC_METRIC_IP, &so, sc, ids), EC_ENOENT,
           "no index: build one with `embcache index build m 1 t`");
    /* Bad builds. */
    expect(ec_index_build(NULL, "m", "1", "t", NULL, NULL), EC_EINVAL, "NULL");
    expect(ec_index_build(c, "m", "1", NULL, NULL, NULL), EC_EINVAL, "NULL");
    expect(ec_index_build(c, "m", "1", "nope", NULL, NULL), EC_ENOENT, "nope");
    expect(ec_index_build(c, "m", "1", "t", &(ec_index_opts){.flags = 2}, NULL), EC_EINVAL,
           "unknown flags");
    expect(ec_index_build(c, "m", "1", "t", &(ec_index_opts){.metric = (ec_metric)7}, NULL),
           EC_EINVAL, "unknown metric");
    expect(ec_index_build(c, "m", "1", "t", &(ec_index_opts){.nlist = 2001}, NULL),
           EC_EINVAL, "at most one list per row");
    expect(ec_index_build(c, "m", "1", "t", &(ec_index_opts){.nlist = 64, .train_rows = 10},
                          NULL), EC_EINVAL, "at least as many rows as lists");
    expect(ec_index_build(c, "bad", "1", "v1", NULL, NULL), EC_EINVAL, "2-D");
    expect(ec_index_build(c, "bad", "1", "vi", NULL, NULL), EC_EDTYPE, "its dtype is i32");
    o.progress = stop_at_train;
    o.progress_arg = &calls;
    expect(ec_index_build(c, "m", "1", "t", &o, NULL), EC_EINVAL, "stopped by its progress");
    assert_true(calls >= 2);
    expect(ec_search(t, q, 1, DIM, K, EC_METRIC_IP, &so, sc, ids), EC_ENOENT, "no index");
    index_path(NULL, 0, 0);

    /* An IP index: searched by IP it answers; by cosine or L2 it refuses. */
    build_ok(c, "m", "1", "t", EC_METRIC_IP, 64, NULL);
    expect(ec_search(t, q, 1, DIM, K, EC_METRIC_L2, &so, sc, ids), EC_EINVAL,
           "built for metric ip, and this search asks for l2");
    expect(ec_search(t, q, 4, DIM, K, EC_METRIC_COSINE, &so, sc, ids), EC_EINVAL,
           "--metric cosine");
    assert_int_equal(ec_search(t, q, 4, DIM, K, EC_METRIC_IP, &so, sc, ids), 0);
    /* The exact path's argument checks come first. */
    expect(ec_search(t, q, 1, DIM - 1, K, EC_METRIC_IP, &so, sc, ids), EC_EINVAL,
           "queries have 63 floats");
    /* k beyond the rows of the probed lists: padded as past the table. */
    {
        ec_index_info ii;
        ec_search_opts one = {.nprobe = 1};
        size_t found = 0;
        assert_int_equal(ec_index_info_get(t, &ii), 0);
        assert_true(ii.max_list < 600);
        assert_int_equal(ec_search(t, q, 1, DIM, 600, EC_METRIC_IP, &one, sc, ids), 0);
        while (found < 600 && ids[found] >= 0)
            found++;
        assert_true(found >= ii.min_list && found <= ii.max_list);
        for (size_t i = found; i < 600; i++) {
            assert_int_equal(ids[i], -1);
            assert_true(sc[i] == -INFINITY);
        }
    }
    /* More queries than one chunk (8192): the second chunk answers as it
     * would alone. */
    {
        size_t nq = 9000, tail = nq - 8192;
        float *qq = malloc(nq * DIM * sizeof(float));
        uint64_t seed = 77;
        struct answer all, part;
        assert_non_null(qq);
        for (size_t i = 0; i < nq * DIM; i++)
            qq[i] = x[(i / DIM) % 2000 * DIM + i % DIM] + 0.1f * gauss(&seed);
        all = search_ok(t, qq, nq, K, EC_METRIC_IP, 4, 0);
        part = search_ok(t, qq + 8192 * DIM, tail, K, EC_METRIC_IP, 4, 0);
        for (size_t i = 0; i < tail * K; i++)
            if (all.id[8192 * K + i] != part.id[i] || all.sc[8192 * K + i] != part.sc[i])
                fail_msg("query %zu of 9000: row %lld, alone row %lld", 8192 + i / K,
                         (long long)all.id[8192 * K + i], (long long)part.id[i]);
        answer_free(all);
        answer_free(part);
        free(qq);
    }
    ec_tensor_release(t);
    build_ok(c, "m", "1", "t", EC_METRIC_L2, 64, NULL);
    t = resolve_ok(c, "m", "1", "t");
    {
        ec_search_opts one = {.nprobe = 1};
        assert_int_equal(ec_search(t, q, 1, DIM, 600, EC_METRIC_L2, &one, sc, ids), 0);
        assert_int_equal(ids[599], -1);
        assert_true(sc[599] == INFINITY);
    }
    ec_tensor_release(t);
    daemon_alive();
    ec_client_close(c);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 4. Retire, restart                                                  */

static void test_retire_removes_index(void **state)
{
    float *q, *x = mixture(3000, 4, 0.35f, &q, 20);
    char path[1200];
    struct answer before;
    ec_client *c;
    ec_tensor *t;

    (void)state;
    env_start("ec-index", NULL);
    c = connect_ok();
    import_table(c, "m", 1, "t", EC_DTYPE_F32, x, 3000);
    import_table(c, "m", 2, "t", EC_DTYPE_F32, x, 3000);
    build_ok(c, "m", "1", "t", EC_METRIC_COSINE, 0, NULL);
    index_path(NULL, 0, 1);
    build_ok(c, "m", "2", "t", EC_METRIC_COSINE, 0, NULL);
    build_ok(c, "m", "2", "t", EC_METRIC_COSINE, 0, NULL); /* replaces it */
    index_path(NULL, 0, 2);
    t = resolve_ok(c, "m", "2", "t");
    before = search_ok(t, q, 20, K, EC_METRIC_COSINE, 4, 0);
    ec_tensor_release(t);
    assert_int_equal(ec_model_retire(c, "m", 1, 0), 0);
    index_path(path, sizeof(path), 1); /* version 2's */
    /* The index is a file: a new daemon on the same data serves it. */
    ec_client_close(c);
    ect_daemon_stop(E.daemon);
    E.daemon = ect_daemon_start(E.data, E.sock, NULL);
    c = connect_ok();
    t = resolve_ok(c, "m", "2", "t");
    {
        struct answer after = search_ok(t, q, 20, K, EC_METRIC_COSINE, 4, 0);
        same_answer(before, after, 20 * K, "before and after a restart");
        answer_free(after);
    }
    ec_tensor_release(t);
    assert_int_equal(ec_model_retire(c, "m", 2, 0), 0);
    index_path(NULL, 0, 0);
    answer_free(before);
    ec_client_close(c);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 5. First searches racing on one handle                              */

struct racer {
    ec_tensor *t;
    const float *q;
    struct answer a;
    int rc;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    ec_search_opts o = {.threads = 1, .nprobe = 16};

    r->rc = ec_search(r->t, r->q, 20, DIM, K, EC_METRIC_IP, &o, r->a.sc, r->a.id);
    return NULL;
}

static void test_threads_race_to_map(void **state)
{
    float *q, *x = mixture(5000, 5, 0.35f, &q, 20);
    struct racer r[8];
    pthread_t th[8];
    ec_client *c;

    (void)state;
    env_start("ec-index", NULL);
    c = connect_ok();
    import_table(c, "m", 1, "t", EC_DTYPE_F32, x, 5000);
    build_ok(c, "m", "1", "t", EC_METRIC_IP, 0, NULL);
    for (int round = 0; round < 5; round++) {
        ec_tensor *t = resolve_ok(c, "m", "1", "t"); /* nothing mapped yet */
        for (int i = 0; i < 8; i++) {
            r[i] = (struct racer){.t = t, .q = q,
                                  .a = {malloc(20 * K * sizeof(float)),
                                        malloc(20 * K * sizeof(int64_t))}};
            assert_int_equal(pthread_create(&th[i], NULL, race, &r[i]), 0);
        }
        for (int i = 0; i < 8; i++) {
            pthread_join(th[i], NULL);
            if (r[i].rc)
                fail_msg("thread %d: %d", i, r[i].rc);
            if (i)
                same_answer(r[0].a, r[i].a, 20 * K, "two racing threads");
        }
        for (int i = 0; i < 8; i++)
            answer_free(r[i].a);
        ec_tensor_release(t);
    }
    ec_client_close(c);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 6. The CLI                                                          */

static void test_cli_index(void **state)
{
    float *q, *x = mixture(4000, 6, 0.35f, &q, 3);
    uint64_t shape[2] = {3, DIM};
    char qp[600], cmd[2048], line[512], errp[600];
    struct answer a;
    int lines = 0;
    bool progress = false;
    ec_client *c;
    ec_tensor *t;
    FILE *p;

    (void)state;
    env_start("ec-index", NULL);
    c = connect_ok();
    import_table(c, "m", 1, "t", EC_DTYPE_F32, x, 4000);
    snprintf(errp, sizeof(errp), "%s/err.txt", E.dir);
    snprintf(cmd, sizeof(cmd), "%s --socket %s index build m 1 t --nlist 128 --metric l2 "
             "2>%s", EC_TEST_CLI, E.sock, errp);
    p = popen(cmd, "r");
    assert_non_null(p);
    while (fgets(line, sizeof(line), p))
        lines += strstr(line, "index of m 1 t: 4000 rows of 64, metric l2, 128 lists") != NULL;
    assert_int_equal(pclose(p), 0);
    assert_int_equal(lines, 1);
    p = fopen(errp, "r");
    assert_non_null(p);
    while (fgets(line, sizeof(line), p))
        progress |= strstr(line, "index build: train done (10)") != NULL;
    fclose(p);
    assert_true(progress);
    /* search --nprobe prints what ec_search returns. */
    t = resolve_ok(c, "m", "1", "t");
    a = search_ok(t, q, 3, 5, EC_METRIC_L2, 3, 0);
    snprintf(qp, sizeof(qp), "%s/q.npy", E.dir);
    assert_int_equal(ect_write_npy_data(qp, EC_DTYPE_F32, 2, shape, q), 0);
    snprintf(cmd, sizeof(cmd), "%s --socket %s search m t --version 1 --query %s -k 5 "
             "--metric l2 --nprobe 3", EC_TEST_CLI, E.sock, qp);
    p = popen(cmd, "r");
    assert_non_null(p);
    lines = 0;
    while (fgets(line, sizeof(line), p)) {
        unsigned qi, rank;
        long long id;
        double s;
        assert_int_equal(sscanf(line, "%u\t%u\t%lld\t%lf", &qi, &rank, &id, &s), 4);
        assert_true(qi < 3 && rank >= 1 && rank <= 5);
        assert_int_equal(id, a.id[qi * 5 + rank - 1]);
        assert_true((float)s == a.sc[qi * 5 + rank - 1]);
        lines++;
    }
    assert_int_equal(pclose(p), 0);
    assert_int_equal(lines, 15);
    /* The wrong metric: the usage exit code (EC_EINVAL) and the message. */
    snprintf(cmd, sizeof(cmd), "%s --socket %s search m t --version 1 --query %s --nprobe 3 "
             "2>&1", EC_TEST_CLI, E.sock, qp);
    p = popen(cmd, "r");
    assert_non_null(p);
    lines = 0;
    while (fgets(line, sizeof(line), p))
        lines += strstr(line, "built for metric l2") != NULL;
    assert_int_equal(WEXITSTATUS(pclose(p)), 2);
    assert_int_equal(lines, 1);
    /* index info --json */
    snprintf(cmd, sizeof(cmd), "%s --socket %s index info m 1 t --json", EC_TEST_CLI, E.sock);
    p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(line, sizeof(line), p));
    assert_non_null(strstr(line, "\"metric\": \"l2\", \"nlist\": 128, \"rows\": 4000"));
    assert_int_equal(pclose(p), 0);
    /* No index on another tensor: exit 4 (not found). */
    import_table(c, "m", 2, "t", EC_DTYPE_F32, x, 4000);
    snprintf(cmd, sizeof(cmd), "%s --socket %s index info m 2 t 2>/dev/null", EC_TEST_CLI,
             E.sock);
    assert_int_equal(WEXITSTATUS(system(cmd)), 4);
    answer_free(a);
    ec_tensor_release(t);
    ec_client_close(c);
    free(q);
    free(x);
}

/* ------------------------------------------------------------------ */
/* 7. Dynamic tables                                                   */

#define DROWS 10000u              /* base rows, with random int64 keys */
#define DEXTRA 200u               /* keys put before the build */
#define DNLIST 128u
#define DPROBE 8u                 /* of 128 lists: about 6% of the rows */
#define DNQ 50u

static void staleness_ok(ec_tensor *t, ec_index_staleness *sn)
{
    if (ec_index_staleness_get(t, sn))
        fail_msg("ec_index_staleness_get: %s", ec_last_error());
}

/* Every result is a live key with the score its row has now (the test's
 * own double-precision score), best first. */
static void scores_of_now(ec_tensor *t, const float *q, struct answer a, size_t nq,
                          ec_metric m)
{
    for (size_t qi = 0; qi < nq; qi++)
        for (size_t r = 0; r < K; r++) {
            int64_t key = a.id[qi * K + r];
            float x[DIM];
            uint8_t found = 0;
            double dot = 0, xx = 0, qq = 0, l2 = 0, want;
            if (key == -1)
                continue;
            assert_int_equal(ec_rows_find(t, &key, 1, x, sizeof(x), &found, NULL), 0);
            if (!found)
                fail_msg("query %zu rank %zu: key %lld is not in the table", qi, r,
                         (long long)key);
            for (size_t j = 0; j < DIM; j++) {
                double u = q[qi * DIM + j], v = x[j];
                dot += u * v, xx += v * v, qq += u * u, l2 += (u - v) * (u - v);
            }
            want = m == EC_METRIC_IP ? dot : m == EC_METRIC_COSINE ? dot / sqrt(xx * qq) : l2;
            if (fabs(a.sc[qi * K + r] - want) > 1e-4 * (1 + fabs(want)))
                fail_msg("query %zu rank %zu: key %lld scores %.9g, and its row now %.9g", qi,
                         r, (long long)key, (double)a.sc[qi * K + r], want);
        }
}

static bool in_top(struct answer a, size_t qi, int64_t key)
{
    for (size_t r = 0; r < K; r++)
        if (a.id[qi * K + r] == key)
            return true;
    return false;
}

static bool listed(const int64_t *set, size_t n, int64_t key)
{
    for (size_t i = 0; i < n; i++)
        if (set[i] == key)
            return true;
    return false;
}

/* A line of a command's standard output that holds `want`: 1, else 0. */
static int cli_says(const char *args, const char *want)
{
    char cmd[1200], line[2048];
    int hit = 0;
    FILE *p;

    snprintf(cmd, sizeof(cmd), "%s --socket %s %s", EC_TEST_CLI, E.sock, args);
    p = popen(cmd, "r");
    assert_non_null(p);
    while (fgets(line, sizeof(line), p))
        hit |= strstr(line, want) != NULL;
    assert_int_equal(pclose(p), 0);
    return hit;
}

static void dyn_kill9_restart(const char *const *args)
{
    pid_t worker = ect_daemon_worker(E.data);

    /* Keeper and worker: the tables come back from the files alone. */
    assert_int_equal(kill(E.daemon, SIGKILL), 0);
    assert_int_equal(kill(worker, SIGKILL), 0);
    waitpid(E.daemon, NULL, 0);
    for (int i = 0; i < 500 && kill(worker, 0) == 0; i++)
        usleep(10000);
    unlink(E.sock);
    E.daemon = ect_daemon_start(E.data, E.sock, args);
}

/* A slot of the handle's delta freed and written again between two of its
 * searches: key A next to query 0 is searched (the handle assigns A's slot
 * to a list near query 0), deleted (its slot goes to the tail of the free
 * FIFO), every free slot ahead of it is used by updates of indexed keys
 * (rows far from every query), and key Z next to the query of 20..39
 * farthest from query 0 then lands in A's slot with a new lsn. The handle's next search
 * must assign the slot again: Z is found first, as exact search finds it. */
#define FILL_BATCH 1000u
static void slot_reused(ec_tensor *t, const float *q, const int64_t *base_keys,
                        const int64_t *del, size_t ndel, uint64_t *seed)
{
    uint64_t nb, ns, sb, ahead;
    float *rows = malloc((size_t)FILL_BATCH * DIM * sizeof(float));
    int64_t a = (int64_t)splitmix(seed), z = (int64_t)splitmix(seed);
    int64_t fk[FILL_BATCH];
    size_t far = 20;
    double best = -1;
    struct answer ap, ex;
    ec_rows_result res;
    ec_dyn_info di;

    assert_non_null(rows);
    for (size_t qi = 20; qi < 40; qi++) { /* queries with no key written next to them */
        double d2 = 0;
        for (size_t j = 0; j < DIM; j++)
            d2 += (double)(q[qi * DIM + j] - q[j]) * (q[qi * DIM + j] - q[j]);
        if (d2 > best) {
            best = d2;
            far = qi;
        }
    }
    for (size_t j = 0; j < DIM; j++)
        rows[j] = q[j] + 1e-3f * gauss(seed);
    assert_int_equal(ec_rows_put(t, &a, 1, rows, DIM * sizeof(float), &res), 0);
    ap = search_ok(t, q, 1, K, EC_METRIC_L2, DPROBE, 1);
    assert_true(ap.id[0] == a);
    answer_free(ap);
    assert_int_equal(ec_rows_info(t, &di), 0);
    ec_dyn_region_bytes(di.capacity, DIM * sizeof(float), &nb, &ns, &sb);
    ahead = ns - di.keys; /* free slots, all ahead of A's once it is freed */
    assert_int_equal(ec_rows_delete(t, &a, 1, &res), 0);
    assert_int_equal(res.deleted, 1);
    for (uint64_t done = 0, i = 0; done < ahead; done += FILL_BATCH) {
        size_t n = ahead - done < FILL_BATCH ? (size_t)(ahead - done) : FILL_BATCH;
        for (size_t r = 0; r < n; r++, i++) {
            while (listed(del, ndel, base_keys[i % DROWS]))
                i++;
            fk[r] = base_keys[i % DROWS];
            for (size_t j = 0; j < DIM; j++)
                rows[r * DIM + j] = 40.0f + gauss(seed);
        }
        assert_int_equal(ec_rows_put(t, fk, n, rows, n * DIM * sizeof(float), &res), 0);
        assert_int_equal(res.updated, n);
    }
    for (size_t j = 0; j < DIM; j++)
        rows[j] = q[far * DIM + j] + 1e-3f * gauss(seed);
    assert_int_equal(ec_rows_put(t, &z, 1, rows, DIM * sizeof(float), &res), 0);
    ex = search_ok(t, q + far * DIM, 1, K, EC_METRIC_L2, 0, 0);
    ap = search_ok(t, q + far * DIM, 1, K, EC_METRIC_L2, DPROBE, 1);
    assert_true(ex.id[0] == z);
    if (ap.id[0] != z)
        fail_msg("key %lld, written into the slot of a deleted key next to query 0, is not "
                 "found next to query %zu (%lld)", (long long)z, far, (long long)ap.id[0]);
    answer_free(ex);
    answer_free(ap);
    free(rows);
}

/* A dynamic table with arbitrary int64 keys: recall per metric; then new
 * keys next to queries, rows moved next to queries or away from them,
 * keys that were the best results deleted: the approximate search finds
 * the new keys and the moved rows with the scores of their rows now, and
 * never a deleted key; staleness counts the rows written since the build;
 * a kill -9 of the daemon keeps the index and the slots' lsns (replay);
 * a rebuild brings staleness to 0. */
static void test_dynamic_table_index(void **state)
{
    static const char *const args[] = {"--shm-size", "64M", NULL};
    float *q, *x = mixture(DROWS + DEXTRA, 7, 1.0f, &q, DNQ);
    int64_t *keys = malloc((DROWS + DEXTRA) * sizeof(int64_t));
    int64_t nk[10], upd[10], moved[5], del[50], late = 0;
    float rows[10 * DIM];
    size_t ndel = 0;
    uint64_t seed = 99, kshape[1] = {DROWS};
    char pt[600], pk[600], arg[256], want[256];
    const char *paths[2] = {pt, pk};
    struct answer ex0, ex1, ap1, ap2;
    ec_index_staleness sn;
    ec_index_info ii;
    ec_rows_result res;
    ec_dyn_info di;
    ec_client *c;
    ec_tensor *t;

    (void)state;
    assert_non_null(keys);
    for (size_t i = 0; i < DROWS + DEXTRA; i++)
        keys[i] = (int64_t)splitmix(&seed); /* any int64: negative ones too */
    env_start("ec-index", args);
    c = connect_ok();
    /* The base version's rows, with their keys in "t.keys". */
    write_table(pt, sizeof(pt), 1, "t", EC_DTYPE_F32, x, DROWS);
    snprintf(pk, sizeof(pk), "%s/v1/t.keys.npy", E.dir);
    assert_int_equal(ect_write_npy_data(pk, EC_DTYPE_I64, 1, kshape, keys), 0);
    import_paths(c, "d", 1, paths, 2);
    if (ec_model_dynamic(c, "d", "1", "t", 2 * DROWS, EC_DYN_REFUSE))
        fail_msg("ec_model_dynamic: %s", ec_last_error());
    t = resolve_ok(c, "d", "1", "t");
    /* No index yet. */
    {
        ec_search_opts so = {.nprobe = 4};
        float sc[K];
        int64_t id[K];
        expect(ec_search(t, q, 1, DIM, K, EC_METRIC_IP, &so, sc, id), EC_ENOENT, "no index");
    }
    /* Keys put before the build: in the index, not stale, before and after
     * a restart (replayed with their lsn). */
    assert_int_equal(ec_rows_put(t, keys + DROWS, DEXTRA, x + (size_t)DROWS * DIM,
                                 DEXTRA * DIM * sizeof(float), &res), 0);
    ec_tensor_release(t);
    for (size_t mi = 0; mi < 3; mi++) {
        ec_index_build_stats st;
        struct answer ex, ap, all, one;
        double r, r1;
        build_ok(c, "d", "1", "t", METRICS[mi], DNLIST, &st);
        assert_int_equal(st.rows, DROWS + DEXTRA);
        t = resolve_ok(c, "d", "1", "t");
        assert_int_equal(ec_index_info_get(t, &ii), 0);
        assert_int_equal(ec_rows_info(t, &di), 0);
        assert_int_equal(ii.rows, DROWS + DEXTRA);
        assert_int_equal(ii.built_lsn, di.lsn);
        assert_true(ii.built_lsn >= res.lsn);
        staleness_ok(t, &sn);
        assert_int_equal(sn.stale_rows, 0);
        assert_int_equal(sn.indexed_keys, DROWS + DEXTRA);
        assert_int_equal(sn.live_keys, DROWS + DEXTRA);
        assert_int_equal(sn.table_lsn, sn.built_lsn);
        ex = search_ok(t, q, DNQ, K, METRICS[mi], 0, 0);
        ap = search_ok(t, q, DNQ, K, METRICS[mi], DPROBE, 0);
        all = search_ok(t, q, DNQ, K, METRICS[mi], DNLIST, 1);
        one = search_ok(t, q, DNQ, K, METRICS[mi], 1, 1);
        r = recall_of(ap, ex, DNQ, K, METRICS[mi]);
        r1 = recall_of(one, ex, DNQ, K, METRICS[mi]);
        print_message("dynamic %s: recall@10 %.3f at nprobe %u of %u, %.3f at 1\n",
                      ec_metric_name(METRICS[mi]), r, DPROBE, DNLIST, r1);
        /* The lists are searched, not the table. */
        if (r1 > 0.8)
            fail_msg("dynamic %s: recall@10 %.3f at nprobe 1: not an approximate search",
                     ec_metric_name(METRICS[mi]), r1);
        if (r < 0.9)
            fail_msg("dynamic %s: recall@10 %.3f at nprobe %u of %u: below 0.9",
                     ec_metric_name(METRICS[mi]), r, DPROBE, DNLIST);
        same_answer(all, ex, DNQ * K, "dynamic: nprobe = nlist against exact");
        scores_of_now(t, q, ap, DNQ, METRICS[mi]);
        answer_free(ex);
        answer_free(ap);
        answer_free(all);
        answer_free(one);
        ec_tensor_release(t);
    }
    /* The table moves (the index is L2's, built last). */
    t = resolve_ok(c, "d", "1", "t");
    ex0 = search_ok(t, q, DNQ, K, EC_METRIC_L2, 0, 0);
    /* Rows that were the best of queries 30..34 move far away. */
    for (size_t i = 0; i < 5; i++) {
        moved[i] = ex0.id[(30 + i) * K];
        for (size_t j = 0; j < DIM; j++)
            rows[i * DIM + j] = q[(30 + i) * DIM + j] + 40.0f;
    }
    assert_int_equal(ec_rows_put(t, moved, 5, rows, 5 * DIM * sizeof(float), &res), 0);
    assert_int_equal(res.updated, 5);
    /* New keys, each the nearest row of one of queries 0..9. */
    for (size_t i = 0; i < 10; i++) {
        nk[i] = (int64_t)splitmix(&seed);
        for (size_t j = 0; j < DIM; j++)
            rows[i * DIM + j] = q[i * DIM + j] + 1e-3f * gauss(&seed);
    }
    assert_int_equal(ec_rows_put(t, nk, 10, rows, sizeof(rows), &res), 0);
    assert_int_equal(res.inserted, 10);
    /* Indexed keys far from queries 10..19 moved next to them. */
    for (size_t i = 0; i < 10; i++) {
        size_t j = (i * 997 + 13) % DROWS;
        while (in_top(ex0, 10 + i, keys[j]) || listed(moved, 5, keys[j]))
            j = (j + 1) % DROWS;
        upd[i] = keys[j];
        for (size_t d = 0; d < DIM; d++)
            rows[i * DIM + d] = q[(10 + i) * DIM + d] + 1e-3f * gauss(&seed);
    }
    assert_int_equal(ec_rows_put(t, upd, 10, rows, sizeof(rows), &res), 0);
    assert_int_equal(res.updated, 10);
    /* The two best keys of queries 20..29 deleted. */
    for (size_t i = 20; i < 30; i++)
        for (size_t r = 0; r < 2; r++) {
            int64_t key = ex0.id[i * K + r];
            if (!listed(del, ndel, key) && !listed(moved, 5, key) && !listed(upd, 10, key))
                del[ndel++] = key;
        }
    assert_int_equal(ec_rows_delete(t, del, ndel, &res), 0);
    assert_int_equal(res.deleted, ndel);
    ex1 = search_ok(t, q, DNQ, K, EC_METRIC_L2, 0, 0);
    ap1 = search_ok(t, q, DNQ, K, EC_METRIC_L2, DPROBE, 0);
    {
        double r = recall_of(ap1, ex1, DNQ, K, EC_METRIC_L2);
        print_message("dynamic l2 after 25 rows written and %zu deleted: recall@10 %.3f\n",
                      ndel, r);
        assert_true(r >= 0.9);
    }
    scores_of_now(t, q, ap1, DNQ, EC_METRIC_L2);
    /* Every list probed by all the queries at once (the new rows of each
     * scored for all of them together): the exact answer. */
    {
        struct answer all1 = search_ok(t, q, DNQ, K, EC_METRIC_L2, DNLIST, 0);
        same_answer(all1, ex1, DNQ * K, "dynamic, after the writes: nprobe = nlist against "
                                        "exact");
        answer_free(all1);
    }
    for (size_t i = 0; i < 10; i++) {
        if (ap1.id[i * K] != nk[i] || ex1.id[i * K] != nk[i])
            fail_msg("query %zu: the new key %lld is not found first (approximate %lld, exact "
                     "%lld)", i, (long long)nk[i], (long long)ap1.id[i * K],
                     (long long)ex1.id[i * K]);
        assert_true(ap1.sc[i * K] == ex1.sc[i * K]);
        if (ap1.id[(10 + i) * K] != upd[i])
            fail_msg("query %zu: the key moved next to it (%lld) is not found first (%lld)",
                     10 + i, (long long)upd[i], (long long)ap1.id[(10 + i) * K]);
        assert_true(ap1.sc[(10 + i) * K] == ex1.sc[(10 + i) * K]);
    }
    for (size_t i = 0; i < 5; i++)
        if (in_top(ap1, 30 + i, moved[i]))
            fail_msg("query %zu: key %lld, moved away, is still found", 30 + i,
                     (long long)moved[i]);
    for (size_t qi = 0; qi < DNQ; qi++)
        for (size_t i = 0; i < ndel; i++)
            assert_false(in_top(ap1, qi, del[i]));
    /* Staleness: the 25 rows written since the build. */
    staleness_ok(t, &sn);
    assert_int_equal(ec_rows_info(t, &di), 0);
    assert_int_equal(sn.stale_rows, 25);
    assert_int_equal(sn.live_keys, di.keys);
    assert_int_equal(sn.live_keys, DROWS + DEXTRA + 10 - ndel);
    assert_int_equal(sn.table_lsn, di.lsn);
    assert_true(sn.table_lsn > sn.built_lsn);
    assert_int_equal(sn.indexed_keys, DROWS + DEXTRA);
    /* The CLI says so, in `index info` and `stats`. */
    snprintf(want, sizeof(want), "built at lsn %llu, table at lsn %llu: 25 rows written since",
             (unsigned long long)sn.built_lsn, (unsigned long long)sn.table_lsn);
    assert_true(cli_says("index info d 1 t", want));
    assert_true(cli_says("index info d 1 t --json", "\"stale_rows\": 25"));
    assert_true(cli_says("stats", "    index: built at lsn"));
    snprintf(arg, sizeof(arg), "\"index\":{\"built_lsn\":%llu,\"table_lsn\":%llu,\"live_keys\":%llu,"
             "\"stale_rows\":25}", (unsigned long long)sn.built_lsn,
             (unsigned long long)sn.table_lsn, (unsigned long long)sn.live_keys);
    assert_true(cli_says("stats --json", arg));
    ec_tensor_release(t);
    ec_client_close(c);
    /* kill -9: the index and the slots' lsns survive (the log's replay
     * writes each row with its record's lsn). */
    dyn_kill9_restart(args);
    c = connect_ok();
    t = resolve_ok(c, "d", "1", "t");
    {
        ec_index_staleness again;
        staleness_ok(t, &again);
        assert_int_equal(again.stale_rows, 25);
        assert_int_equal(again.built_lsn, sn.built_lsn);
        assert_int_equal(again.table_lsn, sn.table_lsn);
    }
    ap2 = search_ok(t, q, DNQ, K, EC_METRIC_L2, DPROBE, 0);
    same_answer(ap1, ap2, DNQ * K, "before and after kill -9");
    /* Again at the same lsn (the handle kept the delta's slots), then one
     * more key written: the handle's next search sees it. */
    {
        struct answer a = search_ok(t, q, DNQ, K, EC_METRIC_L2, DPROBE, 1);
        late = (int64_t)splitmix(&seed);
        same_answer(ap1, a, DNQ * K, "a second search at the same lsn");
        answer_free(a);
        for (size_t j = 0; j < DIM; j++)
            rows[j] = q[40 * DIM + j] + 1e-3f * gauss(&seed);
        assert_int_equal(ec_rows_put(t, &late, 1, rows, DIM * sizeof(float), &res), 0);
        a = search_ok(t, q + 40 * DIM, 1, K, EC_METRIC_L2, DPROBE, 1);
        if (a.id[0] != late)
            fail_msg("a key written after the last search (%lld) is not found (%lld)",
                     (long long)late, (long long)a.id[0]);
        answer_free(a);
        /* The handle assigned it to a list near query 40. Moved next to
         * queries 41..47 in turn: each search assigns it again (its slot's
         * lsn moved) and finds it there. */
        for (size_t qi = 41; qi < 48; qi++) {
            for (size_t j = 0; j < DIM; j++)
                rows[j] = q[qi * DIM + j] + 1e-3f * gauss(&seed);
            assert_int_equal(ec_rows_put(t, &late, 1, rows, DIM * sizeof(float), &res), 0);
            a = search_ok(t, q + qi * DIM, 1, K, EC_METRIC_L2, DPROBE, 1);
            if (a.id[0] != late)
                fail_msg("key %lld, moved next to query %zu, is not found (%lld)",
                         (long long)late, qi, (long long)a.id[0]);
            answer_free(a);
        }
    }
    /* The nearest indexed keys of query 48, deleted after a search at this
     * lsn looked its lists' keys up: the next search, at the new lsn, looks
     * them up again, so the deleted keys take none of its candidates' places
     * (they would take them all) and the next nearest are found. */
    {
        ec_search_opts exact = {.threads = 1};
        struct answer a = search_ok(t, q + 48 * DIM, 1, K, EC_METRIC_L2, DPROBE, 1), e;
        float sc30[30];
        int64_t id30[30];
        size_t nd = 0, hit = 0;
        answer_free(a);
        assert_int_equal(ec_search(t, q + 48 * DIM, 1, DIM, 30, EC_METRIC_L2, &exact, sc30,
                                   id30), 0);
        for (size_t r = 0; r < 30; r++)
            if (id30[r] != -1 && id30[r] != late && !listed(nk, 10, id30[r]) &&
                !listed(upd, 10, id30[r]) && !listed(moved, 5, id30[r]) &&
                !listed(del, ndel, id30[r]))
                del[ndel + nd++] = id30[r];
        assert_true(nd >= 25);
        assert_int_equal(ec_rows_delete(t, del + ndel, nd, &res), 0);
        assert_int_equal(res.deleted, nd);
        e = search_ok(t, q + 48 * DIM, 1, K, EC_METRIC_L2, 0, 0);
        a = search_ok(t, q + 48 * DIM, 1, K, EC_METRIC_L2, DPROBE, 1);
        for (size_t r = 0; r < K; r++) {
            assert_false(listed(del + ndel, nd, a.id[r]));
            hit += in_top(e, 0, a.id[r]) && a.id[r] != -1;
        }
        if (hit < K - 1)
            fail_msg("after its %zu nearest keys were deleted, query 48 finds %zu of its %u "
                     "nearest keys now (first: %lld, exact %lld)", nd, hit, K,
                     (long long)a.id[0], (long long)e.id[0]);
        ndel += nd;
        answer_free(a);
        answer_free(e);
    }
    ec_tensor_release(t);
    /* A rebuild: nothing stale, the new keys found through the lists. */
    build_ok(c, "d", "1", "t", EC_METRIC_L2, DNLIST, NULL);
    t = resolve_ok(c, "d", "1", "t");
    staleness_ok(t, &sn);
    assert_int_equal(sn.stale_rows, 0);
    assert_int_equal(sn.indexed_keys, DROWS + DEXTRA + 10 - ndel + 1);
    {
        struct answer ap3 = search_ok(t, q, DNQ, K, EC_METRIC_L2, DPROBE, 0);
        for (size_t i = 0; i < 10; i++)
            assert_true(ap3.id[i * K] == nk[i] && ap3.id[(10 + i) * K] == upd[i]);
        scores_of_now(t, q, ap3, DNQ, EC_METRIC_L2);
        answer_free(ap3);
    }
    slot_reused(t, q, keys, del, ndel, &seed);
    daemon_alive();
    answer_free(ex0);
    answer_free(ex1);
    answer_free(ap1);
    answer_free(ap2);
    ec_tensor_release(t);
    ec_client_close(c);
    free(keys);
    free(q);
    free(x);
}

/* An index built before its tensor was made dynamic is refused by searches
 * (build it again), and the daemon takes no index of rows for a dynamic
 * table, nor a keyed one with a key twice or built past the table's lsn. */
static void test_dynamic_index_refusals(void **state)
{
    float *q, *x = mixture(3000, 8, 0.35f, &q, 4), sc[4 * K];
    int64_t id[4 * K];
    ec_search_opts so = {.nprobe = 4};
    ec_index_staleness sn;
    char path[1200];
    uint8_t *stat_file, *keyed;
    size_t slen, klen;
    ec_client *c;
    ec_tensor *t;

    (void)state;
    env_start("ec-index", NULL);
    c = connect_ok();
    import_table(c, "m", 1, "t", EC_DTYPE_F32, x, 3000);
    build_ok(c, "m", "1", "t", EC_METRIC_IP, 0, NULL);
    index_path(path, sizeof(path), 1);
    stat_file = read_file(path, &slen);
    assert_int_equal(ec_model_dynamic(c, "m", "1", "t", 0, EC_DYN_REFUSE), 0);
    t = resolve_ok(c, "m", "1", "t");
    expect(ec_search(t, q, 4, DIM, K, EC_METRIC_IP, &so, sc, id), EC_EINVAL,
           "built before it was made a dynamic table");
    expect(ec_index_staleness_get(t, &sn), EC_EINVAL, "build it again");
    ec_tensor_release(t);
    /* The daemon: an index of rows is not a dynamic table's. */
    expect(put_raw(c, "t", stat_file, slen, slen, -1), EC_EFORMAT, "is a dynamic table");
    build_ok(c, "m", "1", "t", EC_METRIC_IP, 0, NULL);
    index_path(path, sizeof(path), 1);
    keyed = read_file(path, &klen);
    {
        ec_ivf_header *h = (ec_ivf_header *)(void *)keyed;
        int64_t *ids = (int64_t *)(void *)(keyed + h->sec[EC_IVF_IDS].offset);
        uint8_t *f = malloc(klen);
        assert_non_null(f);
        assert_int_equal(h->format, EC_IVF_FORMAT_KEYED);
        assert_int_equal(h->flags, EC_IVF_KEYED);
        memcpy(f, keyed, klen);
        ((int64_t *)(void *)(f + h->sec[EC_IVF_IDS].offset))[7] = ids[8];
        ec_ivf_seal(f, klen);
        expect(put_raw(c, "t", f, klen, klen, -1), EC_EFORMAT, "appears twice");
        memcpy(f, keyed, klen);
        ((ec_ivf_header *)(void *)f)->built_lsn += 1000;
        ec_ivf_seal(f, klen);
        expect(put_raw(c, "t", f, klen, klen, -1), EC_EFORMAT, "build it again");
        memcpy(f, keyed, klen);
        ((ec_ivf_header *)(void *)f)->flags = 0;
        ((ec_ivf_header *)(void *)f)->built_lsn = 0;
        ec_ivf_seal(f, klen);
        expect(put_raw(c, "t", f, klen, klen, -1), EC_EFORMAT, "is a dynamic table");
        /* Keys need not be row numbers: any int64 goes. */
        memcpy(f, keyed, klen);
        ((int64_t *)(void *)(f + h->sec[EC_IVF_IDS].offset))[0] = INT64_MIN;
        ec_ivf_seal(f, klen);
        assert_int_equal(put_raw(c, "t", f, klen, klen, -1), 0);
        free(f);
    }
    /* The good one again; it searches. */
    assert_int_equal(put_raw(c, "t", keyed, klen, klen, -1), 0);
    t = resolve_ok(c, "m", "1", "t");
    assert_int_equal(ec_search(t, q, 4, DIM, K, EC_METRIC_IP, &so, sc, id), 0);
    staleness_ok(t, &sn);
    assert_int_equal(sn.stale_rows, 0);
    ec_tensor_release(t);
    daemon_alive();
    free(stat_file);
    free(keyed);
    ec_client_close(c);
    free(q);
    free(x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_recall_every_metric, env_teardown),
        cmocka_unit_test_teardown(test_bad_files_refused, env_teardown),
        cmocka_unit_test_teardown(test_errors, env_teardown),
        cmocka_unit_test_teardown(test_retire_removes_index, env_teardown),
        cmocka_unit_test_teardown(test_threads_race_to_map, env_teardown),
        cmocka_unit_test_teardown(test_cli_index, env_teardown),
        cmocka_unit_test_teardown(test_dynamic_table_index, env_teardown),
        cmocka_unit_test_teardown(test_dynamic_index_refusals, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
