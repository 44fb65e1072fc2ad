/*
 * test_tiering.c - the host tier under a memory budget, end to end: a real
 * embcached per test (its own temporary directory under /tmp, short socket
 * path), tables written here as .npy files and every gathered row compared
 * byte for byte with its source file.
 *
 *  - a table four times the budget under a Zipf(0.99) load from two client
 *    processes, with the parent sampling `used_bytes` against the budget;
 *  - 64 client processes missing the same partition at once: one read;
 *  - the version lifecycle under live readers: prewarm, alias switch,
 *    retire (refused while an alias points at the version, unless forced);
 *  - a pinned prewarm, the budget it exhausts, and evict freeing it;
 *  - TTL expiry of idle partitions;
 *  - refresh of a partition file changed on disk, and of one whose layout
 *    changed (refused);
 *  - the CLI's prewarm, evict, retire and refresh subcommands.
 *
 * Client processes are fork()ed children: they never call cmocka (its state
 * belongs to the parent) and report through their exit status and a shared
 * anonymous mapping. Each test's teardown kills what it started, so a failed
 * assertion leaves no daemon or child behind. No assertion depends on timing;
 * the sleeps only give the daemon's background work (prewarm, TTL) a chance.
 */
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/partfile.h"
#include "itest.h"
#include "testutil.h"

/* ------------------------------------------------------------------ */
/* Partition files                                                      */

/* The data directory's partition files, newline-separated. */
static void parts_list(char *out, size_t len)
{
    char pat[600];
    glob_t g;

    out[0] = '\0';
    snprintf(pat, sizeof(pat), "%s/parts/*%s", E.data, EC_PARTFILE_EXT);
    if (glob(pat, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            strncat(out, g.gl_pathv[i], len - strlen(out) - 1);
            strncat(out, "\n", len - strlen(out) - 1);
        }
        globfree(&g);
    }
}

/* The files of `now` that are not in `before`, newline-separated; returns
 * how many. */
static int parts_new(const char *before, const char *now, char *out, size_t len)
{
    const char *p = now;
    int n = 0;

    out[0] = '\0';
    while (*p) {
        const char *nl = strchr(p, '\n');
        char one[600];
        size_t l = nl ? (size_t)(nl - p) : strlen(p);
        snprintf(one, sizeof(one), "%.*s\n", (int)l, p);
        if (!strstr(before, one)) {
            strncat(out, one, len - strlen(out) - 1);
            n++;
        }
        p += l + (nl ? 1 : 0);
    }
    return n;
}

/* Wait (up to ~3 s) until none of the newline-separated files exists;
 * returns how many still do. */
static int parts_gone(const char *files)
{
    int left = 0;

    for (int tries = 0; tries < 300; tries++) {
        const char *p = files;
        left = 0;
        while (*p) {
            const char *nl = strchr(p, '\n');
            char one[600];
            size_t l = nl ? (size_t)(nl - p) : strlen(p);
            snprintf(one, sizeof(one), "%.*s", (int)l, p);
            if (access(one, F_OK) == 0)
                left++;
            p += l + (nl ? 1 : 0);
        }
        if (!left)
            break;
        usleep(10000);
    }
    return left;
}

/* ------------------------------------------------------------------ */
/* 1. A table 4x the budget under a Zipf load                           */

/* f32 [65536, 256]: 64 MiB of 1 KiB rows against a 16 MiB budget. 16 KiB
 * partitions (4096 of them): with 256 KiB ones a Zipf(0.99) batch of 64 rows
 * spread over the table misses ~32 partitions, 8 MiB of reads per gather, and
 * a useful number of gathers would read tens of GiB. */
#define Z_ROWS 65536u
#define Z_COLS 256u
#define Z_PART_BYTES 16384u
#define Z_BUDGET (16u << 20)
#define Z_CLIENTS 2
#define Z_GATHERS 3000
#define Z_BATCH 64
#define Z_S 0.99

struct zipf {
    uint64_t n;
    double *cdf;     /* cdf[k]: P(rank <= k) */
    uint32_t *row;   /* rank -> row, a fixed random permutation */
};

/* k^-s for k >= 1, without libm: k = m * 2^e with m in [1, 2), ln m from
 * the atanh series, exp by squaring a short Taylor series. Plenty for
 * Zipf weights. */
static double zipf_weight(uint64_t k, double s)
{
    double m = (double)k, z, z2, term, ln = 0, x, ex = 1, t = 1;
    int e = 0;

    while (m >= 2) {
        m /= 2;
        e++;
    }
    z = (m - 1) / (m + 1);
    z2 = z * z;
    term = z;
    for (int i = 1; i < 40; i += 2) {
        ln += term / i;
        term *= z2;
    }
    ln = 2 * ln + e * 0.69314718055994530942;
    x = -s * ln / 64; /* exp(x * 64) = exp(x)^64 */
    for (int i = 1; i < 20; i++) {
        t *= x / i;
        ex += t;
    }
    for (int i = 0; i < 6; i++)
        ex *= ex;
    return ex;
}

static void zipf_init(struct zipf *z, uint64_t n, double s, uint64_t seed)
{
    double sum = 0;

    z->n = n;
    z->cdf = malloc(n * sizeof(*z->cdf));
    z->row = malloc(n * sizeof(*z->row));
    assert_non_null(z->cdf);
    assert_non_null(z->row);
    for (uint64_t k = 0; k < n; k++) {
        sum += zipf_weight(k + 1, s);
        z->cdf[k] = sum;
    }
    for (uint64_t k = 0; k < n; k++)
        z->cdf[k] /= sum;
    z->cdf[n - 1] = 1.0;
    for (uint64_t k = 0; k < n; k++)
        z->row[k] = (uint32_t)k;
    for (uint64_t k = n - 1; k > 0; k--) {
        uint64_t j = splitmix(&seed) % (k + 1);
        uint32_t tmp = z->row[k];
        z->row[k] = z->row[j];
        z->row[j] = tmp;
    }
}

/* A row drawn by rank from Zipf(s): the first rank whose CDF reaches u. */
static uint64_t zipf_row(const struct zipf *z, uint64_t *rng)
{
    double u = (double)(splitmix(rng) >> 11) * 0x1.0p-53;
    uint64_t lo = 0, hi = z->n - 1;

    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (z->cdf[mid] < u)
            lo = mid + 1;
        else
            hi = mid;
    }
    return z->row[lo];
}

static void zipf_free(struct zipf *z)
{
    free(z->cdf);
    free(z->row);
}

static void __attribute__((noreturn)) zipf_client(const struct table *tb, const struct zipf *z,
                                                  unsigned k)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    int64_t ids[Z_BATCH];
    uint8_t *buf = malloc(Z_BATCH * tb->row_bytes);
    uint64_t rng = 1000 + k;

    if (!buf || ec_client_connect(E.sock, &c) || ec_tensor_resolve(c, "z", "1", "zipf", &t)) {
        fprintf(stderr, "zipf client %u: %s\n", k, ec_last_error());
        _exit(2);
    }
    for (int g = 0; g < Z_GATHERS; g++) {
        for (int i = 0; i < Z_BATCH; i++)
            ids[i] = (int64_t)zipf_row(z, &rng);
        if (gather_check(t, ids, Z_BATCH, tb, buf, Z_BATCH * tb->row_bytes)) {
            fprintf(stderr, "zipf client %u: gather %d failed\n", k, g);
            _exit(3);
        }
    }
    ec_tensor_release(t);
    ec_client_close(c);
    free(buf);
    _exit(0);
}

static void budget_zipf(ec_cache_mode mode)
{
    const char *extra[] = {"--shm-size", "64M", "--budget", "16M", NULL};
    struct statv s[] = {{"used_bytes", 0, 0}, {"budget_bytes", 0, 0}};
    struct statv fin[] = {{"client_rows", 0, 0}, {"client_hit_rows", 0, 0},
                          {mode == EC_CACHE_ROWS ? "row_evicted" : "evictions", 0, 0},
                          {mode == EC_CACHE_ROWS ? "row_admitted" : "page_ins", 0, 0},
                          {"pager_reads", 0, 0}, {"used_bytes", 0, 0},
                          {"budget_bytes", 0, 0}, {"resident_partitions", 0, 0},
                          {"client_miss_rows", 0, 0}};
    struct table tb;
    struct zipf z;
    ec_client *c;
    pid_t kids[Z_CLIENTS];
    int running = Z_CLIENTS, status[Z_CLIENTS];
    double deadline;
    uint64_t max_used = 0, samples = 0, over = 0, over_used = 0, rows0, hits0, misses0;

    env_start("ec-tz", extra);
    table_make(&tb, "zipf.npy", Z_ROWS, Z_COLS, 1);
    zipf_init(&z, Z_ROWS, Z_S, 7);
    c = connect_ok();
    import_npy(c, "z", 1, tb.path, Z_PART_BYTES);
    assert_int_equal(ec_model_cache_mode(c, "z", NULL, mode), 0);
    stats_get(c, s, 2);
    assert_int_equal(s[1].v, Z_BUDGET);
    rows0 = stat_of(c, "client_rows");
    hits0 = stat_of(c, "client_hit_rows");
    misses0 = stat_of(c, "client_miss_rows");

    for (unsigned k = 0; k < Z_CLIENTS; k++) {
        kids[k] = spawn();
        if (kids[k] == 0)
            zipf_client(&tb, &z, k);
        status[k] = -1;
    }
    /* Sample the budget invariant while the clients run (a hung client
     * fails the test after two minutes rather than at ctest's timeout). */
    deadline = now_s() + 120;
    while (running) {
        if (now_s() > deadline)
            fail_msg("the Zipf clients did not finish within 120 s");
        stats_get(c, s, 2);
        samples++;
        if (s[0].v > max_used)
            max_used = s[0].v;
        if (s[0].v > s[1].v && over++ == 0) /* the budget holds at all times */
            over_used = s[0].v;
        usleep(20000);
        for (unsigned k = 0; k < Z_CLIENTS; k++) {
            int st;
            if (status[k] < 0 && waitpid(kids[k], &st, WNOHANG) == kids[k]) {
                status[k] = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
                for (int i = 0; i < E.nkids; i++)
                    if (E.kids[i] == kids[k])
                        E.kids[i] = 0;
                running--;
            }
        }
    }
    stats_get(c, fin, sizeof(fin) / sizeof(fin[0]));
    {
        uint64_t rows = fin[0].v - rows0, hits = fin[1].v - hits0, misses = fin[8].v - misses0;
        /* client_hit_rows counts every row copied out of shared memory, in
         * any round of a gather, so it also counts rows that missed first;
         * rows - client_miss_rows are the rows found resident at once. */
        printf("zipf(%.2f) by %s, %d clients x %d gathers of %d rows, %u partitions of %u "
               "bytes: hit ratio %.3f (client_hit_rows %llu of %llu rows; resident at first "
               "lookup %.3f, client_miss_rows %llu), max used %llu of budget %llu bytes "
               "(%llu samples), evictions %llu, admissions %llu, pager reads %llu, "
               "resident partitions %llu\n",
               Z_S, mode == EC_CACHE_ROWS ? "rows" : "partitions", Z_CLIENTS, Z_GATHERS, Z_BATCH, Z_ROWS * Z_COLS * 4 / Z_PART_BYTES,
               Z_PART_BYTES, rows ? (double)hits / (double)rows : 0.0,
               (unsigned long long)hits, (unsigned long long)rows,
               rows && misses <= rows ? (double)(rows - misses) / (double)rows : 0.0,
               (unsigned long long)misses,
               (unsigned long long)max_used, (unsigned long long)fin[6].v,
               (unsigned long long)samples, (unsigned long long)fin[2].v,
               (unsigned long long)fin[3].v, (unsigned long long)fin[4].v,
               (unsigned long long)fin[7].v);
        for (unsigned k = 0; k < Z_CLIENTS; k++)
            assert_int_equal(status[k], 0);
        if (over)
            fail_msg("used_bytes exceeded the budget in %llu of %llu samples (first: %llu > "
                     "%u)", (unsigned long long)over, (unsigned long long)samples,
                     (unsigned long long)over_used, Z_BUDGET);
        assert_true(fin[5].v <= fin[6].v);
        assert_true(fin[2].v > 0);
        assert_true(rows >= (uint64_t)Z_CLIENTS * Z_GATHERS * Z_BATCH);
        assert_true(hits > 0);
        assert_true(misses > 0 && misses < rows);
    }
    daemon_alive();
    ec_client_close(c);
    zipf_free(&z);
    table_free(&tb);
}

/* The same stream against the same budget, cached by partitions and by
 * rows: the budget holds, rows are right, and each evicts. */
static void test_budget_zipf(void **state)
{
    (void)state;
    budget_zipf(EC_CACHE_PARTITIONS);
}

static void test_budget_zipf_rows(void **state)
{
    (void)state;
    budget_zipf(EC_CACHE_ROWS);
}

/* ------------------------------------------------------------------ */
/* 2. 64 clients missing the same partition: one read                   */

#define SF_CLIENTS 64
/* 1 MiB partitions, so that the one read takes long enough for most of the
 * clients to arrive while it is in flight (printed as "coalesced"). */
#define SF_ROWS 12288u
#define SF_COLS 256u            /* 1 KiB rows */
#define SF_PART_BYTES (1u << 20) /* 1024 rows per partition, 12 partitions */

static void test_single_flight_64(void **state)
{
    static const uint64_t targets[] = {3, 7, 11};
    struct statv s[] = {{"pager_reads", 0, 0}, {"page_ins", 0, 0}, {"fault_coalesced", 0, 0}};
    uint64_t coalesced = 0;
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    ec_tensor_info info;

    (void)state;
    env_start("ec-tsf", NULL);
    table_make(&tb, "sf.npy", SF_ROWS, SF_COLS, 2);
    c = connect_ok();
    import_npy(c, "sf", 1, tb.path, SF_PART_BYTES);
    t = resolve_ok(c, "sf", "1", "sf");
    assert_int_equal(ec_tensor_info_get(t, &info), 0);
    assert_int_equal(info.rows_per_partition, SF_PART_BYTES / (SF_COLS * 4));
    assert_int_equal(info.partitions, SF_ROWS / info.rows_per_partition);

    for (size_t r = 0; r < sizeof(targets) / sizeof(targets[0]); r++) {
        uint64_t part = targets[r], before[3], ready = 0, errs = 0;
        int go[2], rdy[2];
        pid_t kids[SF_CLIENTS];
        char ch;

        stats_get(c, s, 3);
        for (int i = 0; i < 3; i++)
            before[i] = s[i].v;
        assert_int_equal(pipe(go), 0);
        assert_int_equal(pipe(rdy), 0);
        for (int k = 0; k < SF_CLIENTS; k++) {
            kids[k] = spawn();
            if (kids[k] == 0) {
                ec_client *ck = NULL;
                ec_tensor *tk = NULL;
                uint8_t buf[SF_COLS * 4];
                int64_t id = (int64_t)(part * info.rows_per_partition +
                                       (uint64_t)k % info.rows_per_partition);
                char b = 'R';
                int rc;
                close(go[1]);
                close(rdy[0]);
                if (ec_client_connect(E.sock, &ck) ||
                    ec_tensor_resolve(ck, "sf", "1", "sf", &tk)) {
                    fprintf(stderr, "single-flight client %d: %s\n", k, ec_last_error());
                    b = 'E';
                }
                (void)!write(rdy[1], &b, 1);
                close(rdy[1]);
                if (b == 'E')
                    _exit(2);
                (void)!read(go[0], &ch, 1); /* EOF when the parent lets go: all at once */
                rc = gather_check(tk, &id, 1, &tb, buf, sizeof(buf));
                ec_tensor_release(tk);
                ec_client_close(ck);
                _exit(rc ? 3 : 0);
            }
        }
        close(go[0]);
        close(rdy[1]);
        while (ready < SF_CLIENTS && read(rdy[0], &ch, 1) == 1) {
            ready++;
            errs += ch == 'E';
        }
        close(rdy[0]);
        close(go[1]); /* go */
        for (int k = 0; k < SF_CLIENTS; k++)
            assert_int_equal(reap(kids[k]), 0);
        assert_int_equal(ready, SF_CLIENTS);
        assert_int_equal(errs, 0);
        stats_get(c, s, 3);
        printf("%d clients missing partition %llu at once: %llu pager read(s), %llu "
               "page-in(s), %llu coalesced\n", SF_CLIENTS, (unsigned long long)part,
               (unsigned long long)(s[0].v - before[0]), (unsigned long long)(s[1].v - before[1]),
               (unsigned long long)(s[2].v - before[2]));
        assert_int_equal(s[0].v - before[0], 1);
        assert_int_equal(s[1].v - before[1], 1);
        /* one read because the misses were coalesced onto it, not because
         * the clients happened to come one after another */
        coalesced += s[2].v - before[2];
    }
    assert_true(coalesced > 0);
    daemon_alive();
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 3. Lifecycle under live readers                                      */

#define LF_ROWS 8192u
#define LF_COLS 64u
#define LF_PART_BYTES 65536u   /* 256 rows per partition, 32 partitions */
#define LF_READERS 2
#define LF_BATCH 16

struct life_shared {
    _Atomic int switched;    /* parent: the alias now points at 2 */
    _Atomic int acks;        /* readers: dropped every version-1 handle */
    _Atomic int stop;
    _Atomic long gathers[LF_READERS];
    _Atomic long errors[LF_READERS];
    _Atomic long wrong[LF_READERS];      /* a row or a version that is not right */
    _Atomic long resolves[LF_READERS];
    _Atomic long seen[LF_READERS][2];    /* gathers per version */
    char msg[LF_READERS][256];
};

static void __attribute__((noreturn)) life_reader(struct life_shared *sh, int k,
                                                  const struct table *tv)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    ec_tensor_info info;
    int64_t ids[LF_BATCH];
    uint8_t buf[LF_BATCH * LF_COLS * 4];
    uint64_t rng = 77 + (uint64_t)k;
    int acked = 0, ver = 0;
    double deadline = now_s() + 20;

    if (ec_client_connect(E.sock, &c)) {
        snprintf(sh->msg[k], sizeof(sh->msg[k]), "connect: %s", ec_last_error());
        _exit(2);
    }
    for (long n = 0; !atomic_load(&sh->stop) && now_s() < deadline; n++) {
        int sw = atomic_load(&sh->switched), rc;
        if (!t || n % 50 == 0 || (sw && !acked)) {
            ec_tensor *nt = NULL;
            rc = ec_tensor_resolve(c, "life", "current", "emb", &nt);
            atomic_fetch_add(&sh->resolves[k], 1);
            if (rc) {
                atomic_fetch_add(&sh->errors[k], 1);
                snprintf(sh->msg[k], sizeof(sh->msg[k]), "resolve: %s", ec_last_error());
                usleep(1000);
                continue;
            }
            ec_tensor_release(t);
            t = nt;
            ec_tensor_info_get(t, &info);
            ver = (int)info.version;
            if (ver != 1 && ver != 2) {
                atomic_fetch_add(&sh->wrong[k], 1);
                snprintf(sh->msg[k], sizeof(sh->msg[k]), "resolved to version %d", ver);
                ec_tensor_release(t);
                t = NULL;
                continue;
            }
            if (sw && ver != 2) {
                atomic_fetch_add(&sh->wrong[k], 1);
                snprintf(sh->msg[k], sizeof(sh->msg[k]),
                         "'current' resolved to %d after the switch to 2", ver);
            }
            if (sw && !acked) {
                acked = 1;
                atomic_fetch_add(&sh->acks, 1);
            }
        }
        for (int i = 0; i < LF_BATCH; i++)
            ids[i] = (int64_t)(splitmix(&rng) % LF_ROWS);
        rc = ec_tensor_gather(t, ids, LF_BATCH, buf, sizeof(buf));
        atomic_fetch_add(&sh->gathers[k], 1);
        if (rc) {
            atomic_fetch_add(&sh->errors[k], 1);
            snprintf(sh->msg[k], sizeof(sh->msg[k]), "gather (version %d): %s", ver,
                     ec_last_error());
            continue;
        }
        atomic_fetch_add(&sh->seen[k][ver - 1], 1);
        for (int i = 0; i < LF_BATCH; i++)
            if (memcmp(buf + (size_t)i * tv[ver - 1].row_bytes,
                       tv[ver - 1].data + (uint64_t)ids[i] * tv[ver - 1].row_bytes,
                       tv[ver - 1].row_bytes)) {
                atomic_fetch_add(&sh->wrong[k], 1);
                snprintf(sh->msg[k], sizeof(sh->msg[k]),
                         "row %lld of a version-%d handle differs from that version",
                         (long long)ids[i], ver);
                break;
            }
    }
    ec_tensor_release(t);
    ec_client_close(c);
    _exit(0);
}

struct count_q {
    const char *model;
    int versions;
    int64_t last;
};

static int count_cb(const ec_version_info *v, const ec_tensor_listing *t, void *arg)
{
    struct count_q *q = arg;

    if (!t && !strcmp(v->model, q->model)) {
        q->versions++;
        q->last = v->version;
    }
    return 0;
}

static int versions_of(ec_client *c, const char *model)
{
    struct count_q q = {model, 0, 0};
    int rc = ec_catalog_list(c, model, count_cb, &q);

    if (rc && rc != EC_ENOENT)
        fail_msg("list %s: %s", model, ec_last_error());
    return q.versions;
}

static void test_lifecycle(void **state)
{
    struct table tv[2];
    struct life_shared *sh;
    static char before[8192], now[8192], files1[4096], files2[4096];
    ec_client *c;
    ec_tensor *t;
    ec_prewarm_progress p;
    pid_t kids[LF_READERS];
    double t0;
    int rc;

    (void)state;
    env_start("ec-tl", NULL);
    table_make(&tv[0], "v1/emb.npy", LF_ROWS, LF_COLS, 101);
    table_make(&tv[1], "v2/emb.npy", LF_ROWS, LF_COLS, 202);
    assert_memory_not_equal(tv[0].data, tv[1].data, tv[0].row_bytes);
    c = connect_ok();
    parts_list(before, sizeof(before));
    import_npy(c, "life", 1, tv[0].path, LF_PART_BYTES);
    parts_list(now, sizeof(now));
    assert_int_equal(parts_new(before, now, files1, sizeof(files1)), 1);
    memcpy(before, now, sizeof(before));
    import_npy(c, "life", 2, tv[1].path, LF_PART_BYTES);
    parts_list(now, sizeof(now));
    assert_int_equal(parts_new(before, now, files2, sizeof(files2)), 1);
    assert_int_equal(ec_model_alias(c, "life", "current", 1), 0);

    sh = shared_map(sizeof(*sh));
    for (int k = 0; k < LF_READERS; k++) {
        kids[k] = spawn();
        if (kids[k] == 0)
            life_reader(sh, k, tv);
    }
    t0 = now_s();
    usleep(300000);

    /* Prewarm version 2 ahead of the switch. */
    rc = prewarm_wait(c, "life", "2", 0, &p);
    if (rc)
        fail_msg("prewarm life/2: %s", ec_last_error());
    printf("prewarm life/2: version %lld, %llu of %llu partitions, %llu failed, %llu bytes\n",
           (long long)p.version, (unsigned long long)p.done, (unsigned long long)p.partitions,
           (unsigned long long)p.failed, (unsigned long long)p.bytes);
    assert_int_equal(p.version, 2);
    assert_int_equal(p.partitions, LF_ROWS * LF_COLS * 4 / LF_PART_BYTES);
    assert_int_equal(p.done, p.partitions);
    assert_int_equal(p.failed, 0);

    /* Switch, and wait until every reader has dropped its version-1 handle. */
    assert_int_equal(ec_model_alias(c, "life", "current", 2), 0);
    atomic_store(&sh->switched, 1);
    for (int i = 0; i < 1000 && atomic_load(&sh->acks) < LF_READERS; i++)
        usleep(5000);
    assert_int_equal(atomic_load(&sh->acks), LF_READERS);

    /* No alias points at 1 now: retired without force, readers unaffected.
     * A handle resolved before is not a pin: it does not hold the retire
     * back, and reads through it are refused afterwards. */
    t = resolve_ok(c, "life", "1", "emb");
    gather_all_ok(t, &tv[0]);
    rc = ec_model_retire(c, "life", 1, 0);
    if (rc)
        fail_msg("retire life/1: %s", ec_last_error());
    {
        int64_t id = 5;
        uint8_t row[LF_COLS * 4];
        rc = ec_tensor_gather(t, &id, 1, row, sizeof(row));
        printf("gather through a handle of retired life/1: %s: %s\n", ec_strerror(rc),
               ec_last_error());
        assert_int_equal(rc, EC_ENOENT);
    }
    ec_tensor_release(t);
    assert_int_equal(ec_tensor_resolve(c, "life", "1", "emb", &t), EC_ENOENT);
    assert_int_equal(parts_gone(files1), 0);
    assert_int_equal(versions_of(c, "life"), 1);

    while (now_s() - t0 < 3.0)
        usleep(20000);
    atomic_store(&sh->stop, 1);
    for (int k = 0; k < LF_READERS; k++) {
        int st = reap(kids[k]);
        printf("reader %d: %ld gathers (%ld of version 1, %ld of version 2), %ld resolves, "
               "%ld errors, %ld wrong%s%s\n", k, atomic_load(&sh->gathers[k]),
               atomic_load(&sh->seen[k][0]), atomic_load(&sh->seen[k][1]),
               atomic_load(&sh->resolves[k]), atomic_load(&sh->errors[k]),
               atomic_load(&sh->wrong[k]), sh->msg[k][0] ? ": last: " : "", sh->msg[k]);
        assert_int_equal(st, 0);
        assert_int_equal(atomic_load(&sh->errors[k]), 0);
        assert_int_equal(atomic_load(&sh->wrong[k]), 0);
        assert_true(atomic_load(&sh->seen[k][1]) > 0);
    }

    /* "current" points at 2: refused without force, and says why. */
    rc = ec_model_retire(c, "life", 2, 0);
    printf("retire life/2 without force: %s: %s\n", ec_strerror(rc), ec_last_error());
    assert_int_equal(rc, EC_EPERM);
    assert_true(strstr(ec_last_error(), "current") || strstr(ec_last_error(), "force"));
    /* A refusal is an answer, not a reason to drop the client. */
    rc = ec_tensor_resolve(c, "life", "current", "emb", &t);
    if (rc)
        fail_msg("after a refused retire (EC_EPERM) the connection no longer works: %s",
                 ec_last_error());
    ec_tensor_release(t);
    t = resolve_ok(c, "life", "current", "emb");
    gather_all_ok(t, &tv[1]);

    /* A version a client holds a view of is not retired, even by force. */
    {
        ec_view *v = NULL;
        assert_int_equal(ec_tensor_view(t, &v), 0);
        rc = ec_model_retire(c, "life", 2, 1);
        printf("retire --force life/2 under a view: %s: %s\n", ec_strerror(rc),
               ec_last_error());
        assert_int_equal(rc, EC_EBUSY);
        assert_memory_equal(ec_view_data(v), tv[1].data, ec_view_size(v));
        ec_view_release(v);
    }
    ec_tensor_release(t);

    rc = ec_model_retire(c, "life", 2, 1);
    if (rc)
        fail_msg("retire --force life/2: %s", ec_last_error());
    assert_int_equal(versions_of(c, "life"), 0);
    assert_int_equal(ec_tensor_resolve(c, "life", "current", "emb", &t), EC_ENOENT);
    assert_int_equal(ec_tensor_resolve(c, "life", "2", "emb", &t), EC_ENOENT);
    assert_int_equal(parts_gone(files2), 0);
    assert_int_equal(ec_model_retire(c, "life", 2, 1), EC_ENOENT);
    daemon_alive();

    ec_client_close(c);
    munmap(sh, sizeof(*sh));
    table_free(&tv[0]);
    table_free(&tv[1]);
}

/* ------------------------------------------------------------------ */
/* 4. A pinned prewarm, the budget it takes, and evict                  */

#define PW_ROWS 6144u
#define PW_COLS 256u            /* 6 MiB of 1 KiB rows */
#define PW_PART_BYTES 65536u    /* 96 partitions */
#define PW_BUDGET (8u << 20)

static void budget_ok(ec_client *c, const char *when)
{
    struct statv s[] = {{"used_bytes", 0, 0}, {"budget_bytes", 0, 0}};

    stats_get(c, s, 2);
    if (s[0].v > s[1].v) /* the budget holds at all times, pins included */
        fail_msg("%s: used_bytes %llu > budget %llu", when,
                 (unsigned long long)s[0].v, (unsigned long long)s[1].v);
}

static void test_prewarm_pin_and_budget_exhausted(void **state)
{
    const char *extra[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    struct statv s[] = {{"used_bytes", 0, 0}, {"resident_partitions", 0, 0},
                        {"pinned_bytes", 0, 0}, {"page_ins", 0, 0}, {"evictions", 0, 0},
                        {"client_hit_rows", 0, 0}, {"budget_bytes", 0, 0}};
    const size_t ns = sizeof(s) / sizeof(s[0]);
    struct table a, b;
    ec_client *c;
    ec_tensor *ta, *tb;
    ec_prewarm_progress p;
    uint64_t page_ins, hits, evictions, freed = 0;
    uint64_t rng = 5;
    int64_t ids[64];
    uint8_t *buf = malloc(64 * PW_COLS * 4);
    int rc;

    (void)state;
    assert_non_null(buf);
    env_start("ec-tp", extra);
    table_make(&a, "a.npy", PW_ROWS, PW_COLS, 31);
    table_make(&b, "b.npy", PW_ROWS, PW_COLS, 32);
    c = connect_ok();
    import_npy(c, "a", 1, a.path, PW_PART_BYTES);
    import_npy(c, "b", 1, b.path, PW_PART_BYTES);
    /* This test is about partitions: b would be cached by rows otherwise
     * (it does not fit beside a). */
    assert_int_equal(ec_model_cache_mode(c, "b", NULL, EC_CACHE_PARTITIONS), 0);
    assert_int_equal(stat_of(c, "budget_bytes"), PW_BUDGET);

    rc = prewarm_wait(c, "a", "1", EC_PREWARM_PIN, &p);
    if (rc)
        fail_msg("pinned prewarm of a/1: %s", ec_last_error());
    assert_int_equal(p.partitions, PW_ROWS * PW_COLS * 4 / PW_PART_BYTES);
    assert_int_equal(p.done, p.partitions);
    assert_int_equal(p.failed, 0);
    stats_get(c, s, ns);
    printf("a/1 pinned: used %llu, resident %llu partitions, pinned %llu bytes, page-ins %llu\n",
           (unsigned long long)s[0].v, (unsigned long long)s[1].v, (unsigned long long)s[2].v,
           (unsigned long long)s[3].v);
    budget_ok(c, "after the pinned prewarm");

    /* Everything of a is resident: reading it all pages nothing in. */
    ta = resolve_ok(c, "a", "1", "a");
    page_ins = stat_of(c, "page_ins");
    gather_all_ok(ta, &a);
    assert_int_equal(stat_of(c, "page_ins"), page_ins);

    /* b fits only in what a leaves (2 MiB): its partitions evict each other. */
    tb = resolve_ok(c, "b", "1", "b");
    gather_all_ok(tb, &b);
    budget_ok(c, "after reading b in order");
    for (int r = 0; r < 200; r++) {
        for (int i = 0; i < 64; i++)
            ids[i] = (int64_t)(splitmix(&rng) % PW_ROWS);
        if (gather_check(tb, ids, 64, &b, buf, 64 * PW_COLS * 4))
            fail_msg("random gather %d of b failed or was wrong: %s", r, ec_last_error());
        if (r % 10 == 0)
            budget_ok(c, "while reading b at random");
    }
    stats_get(c, s, ns);
    evictions = s[4].v;
    printf("after b: used %llu of budget %llu, resident %llu partitions, pinned %llu bytes, "
           "page-ins %llu, evictions %llu\n", (unsigned long long)s[0].v,
           (unsigned long long)s[6].v, (unsigned long long)s[1].v, (unsigned long long)s[2].v,
           (unsigned long long)s[3].v, (unsigned long long)s[4].v);
    assert_true(evictions > 0);
    assert_true(s[1].v >= PW_ROWS * PW_COLS * 4 / PW_PART_BYTES); /* a's, at least */

    /* a was never evicted: all hits, no page-ins. */
    page_ins = s[3].v;
    hits = s[5].v;
    gather_all_ok(ta, &a);
    stats_get(c, s, ns);
    printf("a again: %llu page-ins, %llu hit rows (of %u)\n",
           (unsigned long long)(s[3].v - page_ins), (unsigned long long)(s[5].v - hits),
           PW_ROWS);
    assert_int_equal(s[3].v, page_ins);

    /* A second pinned 6 MiB cannot fit next to the first in 8 MiB. */
    memset(&p, 0, sizeof(p));
    rc = ec_model_prewarm(c, "b", "1", EC_PREWARM_PIN, &p);
    printf("pinned prewarm of b/1 over budget: %s: %s\n", ec_strerror(rc), ec_last_error());
    if (rc == 0)
        fail_msg("a pinned prewarm of b/1 (6 MiB) next to pinned a/1 (6 MiB) under an 8 MiB "
                 "budget was accepted (progress: %llu/%llu done, %llu failed)",
                 (unsigned long long)p.done, (unsigned long long)p.partitions,
                 (unsigned long long)p.failed);
    assert_int_equal(rc, EC_ENOSPC);
    assert_non_null(strstr(ec_last_error(), "budget"));

    /* The daemon keeps serving both. */
    daemon_alive();
    ids[0] = 0;
    ids[1] = PW_ROWS - 1;
    assert_int_equal(gather_check(ta, ids, 2, &a, buf, 64 * PW_COLS * 4), 0);
    assert_int_equal(gather_check(tb, ids, 2, &b, buf, 64 * PW_COLS * 4), 0);
    budget_ok(c, "after the refused prewarm");

    /* Evicting a frees its pinned bytes; now b's pinned prewarm fits. */
    rc = ec_model_evict(c, "a", "1", &freed);
    if (rc)
        fail_msg("evict a/1: %s", ec_last_error());
    printf("evict a/1 freed %llu bytes\n", (unsigned long long)freed);
    assert_true(freed > 0);
    rc = prewarm_wait(c, "b", "1", EC_PREWARM_PIN, &p);
    if (rc)
        fail_msg("pinned prewarm of b/1 after evicting a/1: %s", ec_last_error());
    assert_int_equal(p.done, p.partitions);
    assert_int_equal(p.failed, 0);
    budget_ok(c, "after the pinned prewarm of b");
    page_ins = stat_of(c, "page_ins");
    gather_all_ok(tb, &b);
    assert_int_equal(stat_of(c, "page_ins"), page_ins);
    /* a pages in again on demand, in what b leaves. */
    gather_all_ok(ta, &a);
    budget_ok(c, "after reading a again");
    daemon_alive();

    ec_tensor_release(ta);
    ec_tensor_release(tb);
    ec_client_close(c);
    table_free(&a);
    table_free(&b);
    free(buf);
}

/* ------------------------------------------------------------------ */
/* 5. TTL expiry                                                        */

static void test_ttl_expiry(void **state)
{
    const char *extra[] = {"--ttl", "1", "--ttl-jitter", "20", NULL};
    struct statv s[] = {{"expirations", 0, 0}, {"resident_partitions", 0, 0},
                        {"page_ins", 0, 0}};
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    uint64_t resident, page_ins, exp0;

    (void)state;
    env_start("ec-tt", extra);
    table_make(&tb, "ttl.npy", 2048, 64, 9); /* 512 KiB, 32 partitions of 16 KiB */
    c = connect_ok();
    import_npy(c, "ttl", 1, tb.path, 16384);
    t = resolve_ok(c, "ttl", "1", "ttl");
    gather_all_ok(t, &tb);
    stats_get(c, s, 3);
    exp0 = s[0].v;
    resident = s[1].v;
    page_ins = s[2].v;
    assert_true(resident >= 32);

    /* TTL 1 s +- 20%: after 2.5 s idle all of them are past it. Allow the
     * daemon's sweep a few more seconds before calling it a failure. */
    usleep(2500000);
    stats_get(c, s, 3);
    for (int i = 0; i < 30 && (s[0].v == exp0 || s[1].v >= resident); i++) {
        usleep(100000);
        stats_get(c, s, 3);
    }
    printf("ttl 1 s: %llu expirations, resident %llu -> %llu partitions\n",
           (unsigned long long)(s[0].v - exp0), (unsigned long long)resident,
           (unsigned long long)s[1].v);
    assert_true(s[0].v > exp0);
    assert_true(s[1].v < resident);

    /* They page in again, correct. */
    gather_all_ok(t, &tb);
    stats_get(c, s, 3);
    assert_true(s[2].v > page_ins);
    daemon_alive();
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 7. The idle-version policy                                           */

/* Two versions of one model with a policy of 1 MiB minimum residency and
 * 20 requests/s: while a child keeps reading v1, v2 sits idle; after a
 * rate window v2 is evicted down to its minimum (it pages in again) and v1
 * is left alone (it does not). */
static void test_idle_policy(void **state)
{
    const char *extra[] = {"--rate-window", "1", NULL};
    struct table tb;
    ec_client *c;
    ec_tensor *t1, *t2;
    uint64_t before, after_busy, after_idle;
    volatile int *stop = shared_map(4096);
    pid_t busy;

    (void)state;
    env_start("ec-idle", extra);
    table_make(&tb, "idle.npy", 8192, 128, 21); /* 4 MiB, 16 partitions of 256 KiB */
    c = connect_ok();
    import_npy(c, "idle", 1, tb.path, 262144);
    import_npy(c, "idle", 2, tb.path, 262144);
    t1 = resolve_ok(c, "idle", "1", "idle");
    t2 = resolve_ok(c, "idle", "2", "idle");
    gather_all_ok(t1, &tb);
    gather_all_ok(t2, &tb);
    assert_int_equal(ec_model_policy(c, "idle", 1 << 20, 20.0), 0);

    busy = spawn();
    if (busy == 0) {
        ec_client *cb = connect_ok();
        ec_tensor *tb1 = resolve_ok(cb, "idle", "1", "idle");
        uint64_t rng = 5;
        static uint8_t buf[16 * 512];
        while (!*stop) {
            int64_t ids[16];
            for (int i = 0; i < 16; i++)
                ids[i] = (int64_t)(splitmix(&rng) % tb.rows);
            if (gather_check(tb1, ids, 16, &tb, buf, sizeof(buf)))
                _exit(1);
            usleep(1000);
        }
        _exit(0);
    }
    /* Two windows and a bit: the sweep has run at least once. */
    for (int i = 0; i < 40 && stat_of(c, "idle_version_evictions") == 0; i++)
        usleep(100000);
    usleep(1200000);
    *stop = 1;
    assert_int_equal(reap(busy), 0);
    assert_true(stat_of(c, "idle_version_evictions") >= 1);

    before = stat_of(c, "page_ins");
    gather_all_ok(t1, &tb);
    after_busy = stat_of(c, "page_ins");
    gather_all_ok(t2, &tb);
    after_idle = stat_of(c, "page_ins");
    printf("idle policy: busy v1 paged in %llu partitions again, idle v2 %llu of 16 "
           "(1 MiB = 4 partitions stayed)\n", (unsigned long long)(after_busy - before),
           (unsigned long long)(after_idle - after_busy));
    assert_int_equal(after_busy - before, 0);
    assert_int_equal(after_idle - after_busy, 12);
    ec_tensor_release(t1);
    ec_tensor_release(t2);
    ec_client_close(c);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 6. Refresh                                                           */

#define RF_ROWS 1024u
#define RF_COLS 64u
#define RF_PART_BYTES 16384u   /* 64 rows per partition, 16 partitions */

/* Write a valid partition file holding `data` with meta's dtype/shape and
 * rows_per_partition, in <dir>/stage, and rename it over `path`. */
static void partfile_replace(const char *path, const ec_partfile_meta *like, uint64_t rpp,
                             const uint8_t *data, uint64_t *checksums_out)
{
    ec_partfile_meta m;
    ec_partfile_writer *w = NULL;
    char stage[600], name[128], made[800];
    uint64_t hck, total;
    uint64_t *cks;

    memset(&m, 0, sizeof(m));
    m.dtype = like->dtype;
    m.ndim = like->ndim;
    memcpy(m.shape, like->shape, sizeof(m.shape));
    m.rows_per_partition = rpp;
    assert_int_equal(ec_partfile_layout(&m), 0);
    cks = calloc(m.partitions, sizeof(*cks));
    assert_non_null(cks);
    snprintf(stage, sizeof(stage), "%s/stage", E.dir);
    if (mkdir(stage, 0700) < 0 && errno != EEXIST)
        fail_msg("mkdir %s: %s", stage, strerror(errno));
    if (ec_partfile_writer_open(stage, &m, &w))
        fail_msg("partition writer: %s", ec_last_error());
    total = m.rows * m.row_bytes;
    for (uint64_t off = 0; off < total; off += 65536) {
        size_t n = total - off < 65536 ? (size_t)(total - off) : 65536;
        assert_int_equal(ec_partfile_writer_append(w, data + off, n), 0);
    }
    if (ec_partfile_writer_commit(w, name, sizeof(name), &hck, cks))
        fail_msg("partition writer commit: %s", ec_last_error());
    ec_partfile_writer_close(w);
    snprintf(made, sizeof(made), "%s/%s", stage, name);
    if (rename(made, path) < 0)
        fail_msg("rename %s over %s: %s", made, path, strerror(errno));
    if (checksums_out)
        memcpy(checksums_out, cks, m.partitions * sizeof(*cks));
    free(cks);
}

static void test_refresh(void **state)
{
    static char before[4096], now[4096], file[4096];
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    ec_tensor_info info;
    ec_partfile_meta meta;
    uint64_t old_ck[RF_ROWS], new_ck[RF_ROWS], changed = 0, rpp, part_bytes;
    uint8_t *newdata, buf[64 * RF_COLS * 4];
    struct table fresh;
    int64_t ids[64];
    int fd, rc, differ = 0;

    (void)state;
    env_start("ec-tr", NULL);
    table_make(&tb, "r.npy", RF_ROWS, RF_COLS, 61);
    c = connect_ok();
    parts_list(before, sizeof(before));
    import_npy(c, "r", 1, tb.path, RF_PART_BYTES);
    parts_list(now, sizeof(now));
    assert_int_equal(parts_new(before, now, file, sizeof(file)), 1);
    file[strcspn(file, "\n")] = '\0';
    t = resolve_ok(c, "r", "1", "r");
    assert_int_equal(ec_tensor_info_get(t, &info), 0);
    rpp = info.rows_per_partition;
    part_bytes = rpp * tb.row_bytes;
    assert_int_equal(rpp, RF_PART_BYTES / (RF_COLS * 4));

    if (ec_partfile_open(file, &meta, &fd))
        fail_msg("open %s: %s", file, ec_last_error());
    assert_int_equal(meta.rows_per_partition, rpp);
    assert_true(meta.partitions <= RF_ROWS);
    assert_int_equal(ec_partfile_read_table(fd, &meta, old_ck), 0);
    close(fd);

    /* Partition 0 resident, with its old rows. */
    for (uint64_t i = 0; i < rpp; i++)
        ids[i] = (int64_t)i;
    assert_int_equal(gather_check(t, ids, (size_t)rpp, &tb, buf, sizeof(buf)), 0);

    /* New contents for partition 0 only, in a valid file of the same layout. */
    newdata = malloc(tb.rows * tb.row_bytes);
    assert_non_null(newdata);
    memcpy(newdata, tb.data, tb.rows * tb.row_bytes);
    ect_fill(EC_DTYPE_F32, 62, 0, part_bytes / 4, newdata);
    assert_memory_not_equal(newdata, tb.data, tb.row_bytes);
    partfile_replace(file, &meta, rpp, newdata, new_ck);
    for (uint64_t p = 0; p < meta.partitions; p++)
        differ += old_ck[p] != new_ck[p];
    assert_int_equal(differ, 1);
    assert_true(old_ck[0] != new_ck[0]);
    fresh = tb;
    fresh.file = NULL;
    fresh.data = newdata;

    /* Before the refresh: still the old rows, from memory. */
    assert_int_equal(gather_check(t, ids, (size_t)rpp, &tb, buf, sizeof(buf)), 0);
    /* Dropped from memory, partition 0 either fails its (old) checksum or is
     * read from the file the daemon still has open: never the new rows
     * under the old checksum, never torn. */
    rc = ec_model_evict(c, "r", "1", NULL);
    if (rc)
        fail_msg("evict r/1: %s", ec_last_error());
    rc = ec_tensor_gather(t, ids, (size_t)rpp, buf, sizeof(buf));
    printf("partition 0 changed on disk, evicted, before refresh: %s%s%s\n",
           rc ? ec_strerror(rc) : "served", rc ? ": " : "", rc ? ec_last_error() : "");
    if (rc == 0)
        assert_memory_equal(buf, tb.data, part_bytes);
    else
        assert_int_equal(rc, EC_ECHECKSUM);

    rc = ec_model_refresh(c, "r", "1", &changed);
    if (rc)
        fail_msg("refresh r/1: %s", ec_last_error());
    printf("refresh r/1: %llu partition(s) changed\n", (unsigned long long)changed);
    assert_int_equal(changed, 1);
    gather_all_ok(t, &fresh);       /* partition 0 new, the rest as before */
    ids[0] = (int64_t)rpp;          /* an unchanged partition */
    ids[1] = RF_ROWS - 1;
    assert_int_equal(gather_check(t, ids, 2, &tb, buf, sizeof(buf)), 0);
    {
        ec_tensor *t2 = resolve_ok(c, "r", "1", "r");
        gather_all_ok(t2, &fresh);
        ec_tensor_release(t2);
    }
    /* A second refresh finds nothing new. */
    assert_int_equal(ec_model_refresh(c, "r", "1", &changed), 0);
    assert_int_equal(changed, 0);

    /* A file whose partitioning changed is refused, and nothing changes. */
    partfile_replace(file, &meta, rpp / 2, tb.data, NULL);
    changed = 12345;
    rc = ec_model_refresh(c, "r", "1", &changed);
    printf("refresh with a new layout: %s: %s\n", ec_strerror(rc), ec_last_error());
    assert_true(rc == EC_EFORMAT || rc == EC_ECORRUPT);
    assert_int_equal(changed, 12345);
    assert_int_equal(versions_of(c, "r"), 1);
    gather_all_ok(t, &fresh);
    assert_int_equal(ec_model_refresh(c, "nope", "1", &changed), EC_ENOENT);
    assert_int_equal(ec_model_refresh(c, "r", "9", &changed), EC_ENOENT);
    daemon_alive();

    ec_tensor_release(t);
    ec_client_close(c);
    free(newdata);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* The CLI's subcommands                                                */

static int cli(char **out, char **err, const char *a1, const char *a2, const char *a3,
               const char *a4, const char *a5)
{
    const char *argv[] = {EC_TEST_CLI, "--socket", E.sock, a1, a2, a3, a4, a5, NULL};
    char *o = NULL, *e = NULL;
    int rc = ect_run(argv, &o, NULL, &e);

    printf("$ embcache");
    for (int i = 3; argv[i]; i++)
        printf(" %s", argv[i]);
    printf("  -> exit %d\n%s%s", rc, o ? o : "", e ? e : "");
    if (out)
        *out = o;
    else
        free(o);
    if (err)
        *err = e;
    else
        free(e);
    return rc;
}

/* The last non-empty line of s. */
static const char *last_line(char *s)
{
    size_t n = strlen(s);
    char *p;

    while (n && s[n - 1] == '\n')
        s[--n] = '\0';
    p = strrchr(s, '\n');
    return p ? p + 1 : s;
}

static void test_cli_subcommands(void **state)
{
    struct table tb;
    ec_client *c;
    char *out = NULL, *err = NULL;
    const char *line;

    (void)state;
    env_start("ec-tc", NULL);
    table_make(&tb, "cli.npy", 2048, 64, 71);
    c = connect_ok();
    import_npy(c, "cli", 1, tb.path, 16384);

    assert_int_equal(cli(NULL, NULL, "prewarm", "cli", "1", "--no-wait", NULL), 0);
    assert_int_equal(cli(&out, NULL, "prewarm", "cli", "1", NULL, NULL), 0);
    line = last_line(out);
    assert_true(strstr(line, "100%") || strstr(line, "done"));
    free(out);
    assert_int_equal(cli(&out, NULL, "prewarm", "cli", "1", "--json", NULL), 0);
    assert_non_null(strchr(out, '{'));
    free(out);
    assert_int_equal(cli(NULL, NULL, "evict", "cli", "1", NULL, NULL), 0);
    assert_int_equal(cli(&out, NULL, "evict", "cli", "1", "--json", NULL), 0);
    assert_non_null(strchr(out, '{'));
    free(out);
    assert_int_equal(cli(NULL, NULL, "refresh", "cli", "1", NULL, NULL), 0);
    assert_int_equal(cli(NULL, NULL, "retire", "cli", "99", NULL, NULL), 4);
    assert_int_equal(cli(NULL, NULL, "prewarm", "nope", "1", NULL, NULL), 4);

    /* Refused while an alias points at it: a failure exit and one line
     * saying how to force it; then forced. */
    assert_int_equal(ec_model_alias(c, "cli", "current", 1), 0);
    assert_int_equal(cli(NULL, &err, "retire", "cli", "1", NULL, NULL), 1);
    assert_non_null(strstr(err, "force"));
    free(err);
    assert_int_equal(cli(NULL, NULL, "retire", "cli", "1", "--force", NULL), 0);
    assert_int_equal(versions_of(c, "cli"), 0);
    daemon_alive();

    ec_client_close(c);
    table_free(&tb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_budget_zipf, env_teardown),
        cmocka_unit_test_teardown(test_budget_zipf_rows, env_teardown),
        cmocka_unit_test_teardown(test_single_flight_64, env_teardown),
        cmocka_unit_test_teardown(test_lifecycle, env_teardown),
        cmocka_unit_test_teardown(test_prewarm_pin_and_budget_exhausted, env_teardown),
        cmocka_unit_test_teardown(test_ttl_expiry, env_teardown),
        cmocka_unit_test_teardown(test_idle_policy, env_teardown),
        cmocka_unit_test_teardown(test_refresh, env_teardown),
        cmocka_unit_test_teardown(test_cli_subcommands, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
