/*
 * test_rows.c - tensors cached by rows, end to end, against a real daemon:
 *
 *   1. churn: reader processes check every byte of more than a million rows
 *      while the daemon admits and evicts rows at a high rate under a small
 *      budget;
 *   2. a flipped byte in a block is never served, and the block never cached;
 *   3. injected EIO and short reads of blocks reach the caller; a short read
 *      that can be resumed is not an error;
 *   4. kill -9 of the daemon while batches of block reads are in flight: after
 *      the warm restart every row read is right;
 *   5. the same id stream gives the same rows by partitions, by rows, and by
 *      rows with the pread pager;
 *   6. mode switches under load lose nothing;
 *   7. a warm restart keeps the cached rows; after a cold one, a prewarm loads
 *      the rows the access history names;
 *   8. rows of a tensor cached by rows reach an (emulated) GPU;
 *   9. the daemon decides the mode from the size and the budget, and
 *      `embcache stats` (ec_client_tensor_stats) says what it decided;
 *  10. a version-1 partition file is cached by partitions until `embcache
 *      upgrade` rewrites it, then by rows.
 *
 * Each test starts its own daemon (itest.h) and checks rows byte for byte
 * against the source .npy.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/partfile.h"
#include "itest.h"
#include "testutil.h"

#define R_ROWS 131072u           /* 64 MiB of 512-byte rows */
#define R_COLS 128u
#define R_PART (256u * 1024u)

struct report {
    _Atomic uint64_t rows[16], wrong[16], errors[16];
};

static int tensor_mode_cb(const ec_tensor_stats *t, void *arg)
{
    ec_tensor_stats *out = arg;

    if (out->model && !strcmp(t->tensor, out->tensor) && !strcmp(t->model, out->model)) {
        *out = *t;
        out->tensor = out->model = NULL;
    }
    return 0;
}

/* The daemon's view of model/t: its stats record (names cleared). */
static ec_tensor_stats tensor_stats_of(ec_client *c, const char *model)
{
    ec_tensor_stats s = {.model = model, .tensor = "t"};

    assert_int_equal(ec_client_tensor_stats(c, tensor_mode_cb, &s), 0);
    if (s.model)
        fail_msg("the daemon lists no tensor %s/t", model);
    return s;
}

/* A reader: batches of ids, 90% from a hot set of `hot` rows and the rest
 * anywhere, until it has checked `want` rows. Exits 0, 1 (a wrong row), 2
 * (an error). */
static void __attribute__((noreturn)) reader(const struct table *tb, const char *model,
                                             int slot, uint64_t hot, uint64_t want,
                                             struct report *rep)
{
    ec_client *c = NULL;
    ec_tensor *t = NULL;
    int64_t ids[64];
    uint8_t *buf = malloc(64 * tb->row_bytes);
    uint64_t seed = 77 + (uint64_t)slot, done = 0;

    if (!buf || ec_client_connect(E.sock, &c) || ec_tensor_resolve(c, model, "1", "t", &t)) {
        fprintf(stderr, "reader %d: %s\n", slot, ec_last_error());
        _exit(2);
    }
    while (done < want) {
        int rc;
        for (int k = 0; k < 64; k++) {
            uint64_t r = splitmix(&seed);
            ids[k] = (int64_t)(r % 10 ? (r >> 8) % hot * 7 % tb->rows : (r >> 8) % tb->rows);
        }
        rc = gather_check(t, ids, 64, tb, buf, 64 * tb->row_bytes);
        if (rc == 1) {
            atomic_fetch_add(&rep->wrong[slot], 1);
            _exit(1);
        }
        if (rc) {
            atomic_fetch_add(&rep->errors[slot], 1);
            _exit(2);
        }
        done += 64;
        atomic_fetch_add(&rep->rows[slot], 64);
    }
    _exit(0);
}

/* ------------------------------------------------------------------ */
/* 1. A million rows checked under churn                                */

static void test_churn_million_rows(void **state)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "4M", NULL};
    struct report *rep = shared_map(sizeof(*rep));
    struct statv sv[] = {{"row_admitted", 0, 0}, {"row_evicted", 0, 0},
                         {"row_block_reads", 0, 0}, {"client_retries", 0, 0},
                         {"row_hints", 0, 0}, {"used_bytes", 0, 0}, {"budget_bytes", 0, 0},
                         {"row_value_bytes", 0, 0}, {"row_overhead_ppm", 0, 0}};
    enum { READERS = 4 };
    const uint64_t per = 262144; /* 4 x 256 Ki = 1,048,576 rows */
    struct table tb;
    ec_client *c;
    pid_t kids[READERS];
    uint64_t total = 0;
    double t0;

    (void)state;
    env_start("ec-rows", args);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 3);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    t0 = now_s();
    for (int k = 0; k < READERS; k++)
        if ((kids[k] = spawn()) == 0)
            reader(&tb, "m", k, 12000, per, rep); /* 12,000 hot rows: 6 MiB > 4 MiB */
    for (int k = 0; k < READERS; k++) {
        int st = reap(kids[k]);
        if (st)
            fail_msg("reader %d exited with %d after %llu rows (%llu wrong, %llu errors)", k,
                     st, (unsigned long long)rep->rows[k], (unsigned long long)rep->wrong[k],
                     (unsigned long long)rep->errors[k]);
        total += rep->rows[k];
        assert_int_equal(rep->wrong[k], 0);
    }
    stats_get(c, sv, sizeof(sv) / sizeof(sv[0]));
    printf("churn: %llu rows checked by %d readers in %.1f s, 0 wrong; %llu rows admitted, "
           "%llu evicted, %llu block reads, %llu seqlock retries, %llu hints; used %llu of "
           "%llu; %llu value bytes cached at %.2f%% overhead\n", (unsigned long long)total,
           READERS, now_s() - t0, (unsigned long long)sv[0].v, (unsigned long long)sv[1].v,
           (unsigned long long)sv[2].v, (unsigned long long)sv[3].v,
           (unsigned long long)sv[4].v, (unsigned long long)sv[5].v,
           (unsigned long long)sv[6].v, (unsigned long long)sv[7].v, sv[8].v / 1e4);
    assert_true(total >= 1000000);
    assert_true(sv[1].v > 10000);        /* the daemon evicted at a high rate */
    assert_true(sv[5].v <= sv[6].v);     /* within the budget */
    /* Most of the budget holds values, and what it costs beyond them is counted. */
    assert_true(sv[7].v >= sv[6].v / 2 && sv[7].v <= sv[5].v);
    assert_true(sv[8].v > 0 && sv[8].v < 300000); /* index sized for 8x the budget */
    assert_int_equal(tensor_stats_of(c, "m").mode, EC_CACHE_ROWS);
    daemon_alive();
    ec_client_close(c);
    table_free(&tb);
}

static void part_file(char *out, size_t len);

/* ------------------------------------------------------------------ */
/* 2. A flipped byte is never served                                    */

static void test_flipped_byte_never_served(void **state)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    char pat[600];
    ec_partfile_meta m;
    uint64_t first, off, fails0;
    uint32_t nb;
    int64_t id = 5000, other = 5009; /* 8 rows per block: 5009 is in another block */
    uint8_t buf[512], byte;
    int fd;

    (void)state;
    env_start("ec-rows", args);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 5);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    assert_int_equal(ec_model_cache_mode(c, "m", NULL, EC_CACHE_ROWS), 0);
    part_file(pat, sizeof(pat));
    assert_int_equal(ec_partfile_open(pat, &m, &fd), 0);
    close(fd);
    assert_int_equal(m.version, 2);
    assert_int_equal(ec_partfile_row_blocks(&m, (uint64_t)id, &first, &nb), 0);
    off = ec_partfile_row_offset(&m, (uint64_t)id) + 100;
    fd = open(pat, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &byte, 1, (off_t)off), 1);
    byte ^= 0x10;
    assert_int_equal(pwrite(fd, &byte, 1, (off_t)off), 1);
    close(fd);

    fails0 = stat_of(c, "checksum_failures");
    t = resolve_ok(c, "m", "1", "t");
    assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_ROWS);
    for (int i = 0; i < 3; i++) {
        int rc = ec_tensor_gather(t, &id, 1, buf, sizeof(buf));
        if (rc != EC_ECHECKSUM)
            fail_msg("gather of the damaged row: %s (%d), expected EC_ECHECKSUM", ec_strerror(rc),
                     rc);
        assert_non_null(strstr(ec_last_error(), "block"));
    }
    /* Not cached: each try read the block again and failed again. */
    assert_true(stat_of(c, "checksum_failures") >= fails0 + 3);
    assert_int_equal(tensor_stats_of(c, "m").resident_rows, 0);
    /* A row of another block is fine. */
    assert_int_equal(ec_tensor_gather(t, &other, 1, buf, sizeof(buf)), 0);
    assert_memory_equal(buf, tb.data + (uint64_t)other * 512, 512);
    ec_tensor_release(t);
    daemon_alive();
    ec_client_close(c);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 3. EIO and short reads reach the caller (a test build's injected faults) */

#ifdef EC_TEST_FAULT_INJECTION
/* Gather 200 single rows: how many failed with EC_EIO; none may be wrong. */
static int faulty_gathers(ec_tensor *t, const struct table *tb, const char *expect)
{
    uint8_t buf[512];
    int eio = 0;

    for (int64_t id = 0; id < 200 * 64; id += 64) {
        int rc = ec_tensor_gather(t, &id, 1, buf, sizeof(buf));
        if (rc == EC_EIO) {
            eio++;
            if (expect && !strstr(ec_last_error(), expect))
                fail_msg("EIO without '%s': %s", expect, ec_last_error());
            continue;
        }
        if (rc)
            fail_msg("gather of row %lld: %s", (long long)id, ec_last_error());
        assert_memory_equal(buf, tb->data + (uint64_t)id * 512, 512);
    }
    return eio;
}

static void injected(const char *spec, int *eio_out)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    struct table tb;
    ec_client *c;
    ec_tensor *t;

    setenv("EMBCACHE_INJECT_FAULT", spec, 1);
    env_start("ec-rows", args);
    unsetenv("EMBCACHE_INJECT_FAULT");
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 7);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    assert_int_equal(ec_model_cache_mode(c, "m", NULL, EC_CACHE_ROWS), 0);
    t = resolve_ok(c, "m", "1", "t");
    *eio_out = faulty_gathers(t, &tb, spec[0] == 'e' ? "failed" : NULL);
    ec_tensor_release(t);
    daemon_alive();
    ec_client_close(c);
    table_free(&tb);
    env_teardown(NULL);
}

static void test_injected_faults(void **state)
{
    int eio;

    (void)state;
    injected("eio:5", &eio);
    printf("every 5th block read fails with EIO: %d of 200 gathers got EC_EIO\n", eio);
    assert_true(eio >= 30 && eio <= 50);
    injected("short:4", &eio);
    printf("every 4th block read stops short: %d of 200 gathers got EC_EIO\n", eio);
    assert_true(eio >= 40 && eio <= 60);
    injected("short_once:3", &eio);
    printf("every 3rd block read stops short once: %d of 200 gathers failed\n", eio);
    assert_int_equal(eio, 0);
}
#endif

/* ------------------------------------------------------------------ */
/* 4. kill -9 in the middle of block reads, then a warm restart          */

static void test_kill9_mid_block_reads(void **state)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "6M", NULL};
    struct report *rep = shared_map(sizeof(*rep));
    struct table tb;
    ec_client *c;
    pid_t kids[3];
    uint64_t kept;

    (void)state;
    env_start("ec-rows", args);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 9);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    ec_client_close(c);
    for (int round = 0; round < 3; round++) {
        for (int k = 0; k < 3; k++)
            if ((kids[k] = spawn()) == 0)
                reader(&tb, "m", k, R_ROWS, UINT64_MAX / 2, rep); /* mostly misses */
        usleep(300000 + 150000 * (unsigned)round);
        /* kill -9 of the worker; the keeper starts another, warm */
        ect_daemon_crash(E.data, E.sock);
        /* Readers see the daemon go: an error, never a wrong row. */
        for (int k = 0; k < 3; k++) {
            int st = reap(kids[k]);
            assert_true(st == 2);
            assert_int_equal(rep->wrong[k], 0);
        }
    }
    c = connect_ok();
    kept = stat_of(c, "row_restart_kept");
    printf("after 3 kill -9 during block reads: the restarted daemon kept %llu rows, dropped "
           "%llu; %llu rows had been checked\n", (unsigned long long)kept,
           (unsigned long long)stat_of(c, "row_restart_dropped"),
           (unsigned long long)(rep->rows[0] + rep->rows[1] + rep->rows[2]));
    assert_true(kept > 0);
    /* Everything it kept, and everything else, reads right. */
    {
        ec_tensor *t = resolve_ok(c, "m", "1", "t");
        gather_all_ok(t, &tb);
        ec_tensor_release(t);
    }
    daemon_alive();
    ec_client_close(c);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 5. Partitions, rows, rows with pread: the same rows                   */

/* One daemon of its own (a directory of its own), the ids gathered through
 * it in batches of 256 into out, the daemon stopped and its directory
 * removed. */
static void same_stream(const struct table *tb, const char *pager, ec_cache_mode mode,
                        uint8_t *out, const int64_t *ids, size_t n)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    ec_client *c;
    ec_tensor *t;

    if (pager)
        setenv("EMBCACHE_PAGER", pager, 1);
    env_start("ec-rows", args);
    unsetenv("EMBCACHE_PAGER");
    c = connect_ok();
    import_npy(c, "m", 1, tb->path, R_PART);
    assert_int_equal(ec_model_cache_mode(c, "m", NULL, mode), 0);
    t = resolve_ok(c, "m", "1", "t");
    for (size_t k = 0; k < n; k += 256)
        if (ec_tensor_gather(t, ids + k, n - k < 256 ? n - k : 256, out + k * tb->row_bytes,
                             (n - k < 256 ? n - k : 256) * tb->row_bytes))
            fail_msg("gather (%s, mode %d): %s", pager ? pager : "io_uring", (int)mode,
                     ec_last_error());
    assert_int_equal(ec_tensor_cache_mode(t), mode);
    if (pager)
        assert_int_equal(stat_of(c, "pager_io_uring"), 0);
    ec_tensor_release(t);
    ec_client_close(c);
    env_teardown(NULL);
}

static void test_same_rows_every_way(void **state)
{
    const size_t n = 20000;
    struct table tb;
    int64_t *ids = malloc(n * sizeof(*ids));
    uint8_t *a = malloc(n * 512), *b = malloc(n * 512), *p = malloc(n * 512);
    uint64_t seed = 11;
    char *dir;

    (void)state;
    assert_true(ids && a && b && p);
    /* The table lives in a directory of its own, removed at the end. */
    env_start("ec-rows", NULL);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 13);
    ect_daemon_stop(E.daemon);
    dir = E.dir;
    memset(&E, 0, sizeof(E));
    for (size_t k = 0; k < n; k++)
        ids[k] = (int64_t)(splitmix(&seed) % R_ROWS);
    same_stream(&tb, NULL, EC_CACHE_PARTITIONS, a, ids, n);
    same_stream(&tb, NULL, EC_CACHE_ROWS, b, ids, n);
    same_stream(&tb, "pread", EC_CACHE_ROWS, p, ids, n);
    E.dir = dir;
    for (size_t k = 0; k < n; k++)
        assert_memory_equal(a + k * 512, tb.data + (uint64_t)ids[k] * 512, 512);
    assert_memory_equal(a, b, n * 512);
    assert_memory_equal(a, p, n * 512);
    printf("%zu ids: the same rows by partitions, by rows, and by rows with pread\n", n);
    table_free(&tb);
    free(ids);
    free(a);
    free(b);
    free(p);
}

/* ------------------------------------------------------------------ */
/* 6. Mode switches under load                                          */

static void test_mode_switch_under_load(void **state)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    struct report *rep = shared_map(sizeof(*rep));
    struct table tb;
    ec_client *c;
    pid_t kids[3];
    uint64_t switches;

    (void)state;
    env_start("ec-rows", args);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 17);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    for (int k = 0; k < 3; k++)
        if ((kids[k] = spawn()) == 0)
            reader(&tb, "m", k, 4000, 150000, rep);
    for (int i = 0; i < 12; i++) {
        usleep(150000);
        assert_int_equal(ec_model_cache_mode(c, "m", NULL,
                                             i % 2 ? EC_CACHE_ROWS : EC_CACHE_PARTITIONS),
                         0);
    }
    assert_int_equal(ec_model_cache_mode(c, "m", NULL, EC_CACHE_AUTO), 0);
    for (int k = 0; k < 3; k++) {
        int st = reap(kids[k]);
        if (st)
            fail_msg("reader %d exited with %d after %llu rows", k, st,
                     (unsigned long long)rep->rows[k]);
        assert_int_equal(rep->wrong[k], 0);
    }
    switches = stat_of(c, "mode_switches");
    printf("12 mode switches under 3 readers: %llu rows checked, 0 wrong, %llu switches\n",
           (unsigned long long)(rep->rows[0] + rep->rows[1] + rep->rows[2]),
           (unsigned long long)switches);
    assert_true(switches >= 12);
    daemon_alive();
    ec_client_close(c);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 7. Warm restart keeps rows; the access history prewarms a cold start  */

static void hot_reads(ec_client *c, const struct table *tb, int times)
{
    ec_tensor *t = resolve_ok(c, "m", "1", "t");
    int64_t ids[100];
    uint8_t buf[100 * 512];

    for (int k = 0; k < 100; k++)
        ids[k] = (int64_t)((uint64_t)k * 997 % R_ROWS);
    for (int i = 0; i < times; i++)
        if (gather_check(t, ids, 100, tb, buf, sizeof(buf)))
            fail_msg("hot gather failed or was wrong");
    ec_tensor_release(t);
}

static void test_restart_and_history(void **state)
{
    static const char *const warm[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    struct table tb;
    ec_client *c;
    ec_prewarm_progress p;
    uint64_t miss0;

    (void)state;
    env_start("ec-rows", warm);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 19);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    assert_int_equal(ec_model_cache_mode(c, "m", NULL, EC_CACHE_ROWS), 0);
    hot_reads(c, &tb, 20);
    ec_client_close(c);
    /* A warm restart (the worker crashes): the rows are still there, and hit. */
    ect_daemon_crash(E.data, E.sock);
    c = connect_ok();
    assert_true(stat_of(c, "row_restart_kept") >= 100);
    miss0 = stat_of(c, "client_miss_rows");
    hot_reads(c, &tb, 1);
    assert_int_equal(stat_of(c, "client_miss_rows"), miss0);
    hot_reads(c, &tb, 5); /* more hits: they are the hot ones */
    ec_client_close(c);
    /* A stopped daemon takes its segment with it: the next one starts
     * cold, with the access history of the data directory. */
    ect_daemon_stop(E.daemon);
    E.daemon = ect_daemon_start(E.data, E.sock, warm);
    c = connect_ok();
    assert_int_equal(stat_of(c, "row_restart_kept"), 0);
    assert_int_equal(prewarm_wait(c, "m", "1", 0, &p), 0);
    printf("prewarm after a cold start: %llu rows from the access history, %llu failed\n",
           (unsigned long long)p.done, (unsigned long long)p.failed);
    assert_true(p.partitions >= 100 && p.done == p.partitions && p.failed == 0);
    miss0 = stat_of(c, "client_miss_rows");
    hot_reads(c, &tb, 1);
    assert_int_equal(stat_of(c, "client_miss_rows"), miss0);
    daemon_alive();
    ec_client_close(c);
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 8. Rows of a tensor cached by rows into (emulated) GPU memory         */

static void test_rows_to_emulated_gpu(void **state)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "4M", NULL};
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    int64_t ids[300];
    uint8_t *dev, *host;
    ec_gather_opts o = {.flags = EC_GATHER_OUT_DEVICE, .device = 0};
    uint64_t seed = 23;

    (void)state;
    setenv("EMBCACHE_BACKEND", "emu", 1);
    env_start("ec-rows", args);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 29);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    t = resolve_ok(c, "m", "1", "t");
    assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_ROWS); /* 64 MiB > 4 MiB budget */
    dev = malloc(300 * 512); /* the emulator's device memory is host memory */
    host = malloc(300 * 512);
    for (int round = 0; round < 5; round++) {
        for (int k = 0; k < 300; k++)
            ids[k] = (int64_t)(splitmix(&seed) % R_ROWS);
        if (ec_tensor_gather_ex(t, ids, 300, dev, 300 * 512, &o))
            fail_msg("gather to emulated GPU 0: %s", ec_last_error());
        for (int k = 0; k < 300; k++)
            assert_memory_equal(dev + k * 512, tb.data + (uint64_t)ids[k] * 512, 512);
    }
    (void)host;
    assert_true(stat_of(c, "client_rows_staged_host") >= 1500);
    free(dev);
    free(host);
    ec_tensor_release(t);
    ec_client_close(c);
    unsetenv("EMBCACHE_BACKEND");
    table_free(&tb);
}

/* ------------------------------------------------------------------ */
/* 9. The daemon's choice, and what stats say                            */

static void test_auto_mode_and_stats(void **state)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    struct table big, small;
    ec_client *c;
    ec_tensor *tb, *ts;
    ec_tensor_stats s;
    int64_t ids[64];
    uint8_t buf[64 * 512];

    (void)state;
    env_start("ec-rows", args);
    table_make(&big, "big/t.npy", R_ROWS, R_COLS, 31);
    table_make(&small, "small/t.npy", 4096, R_COLS, 37); /* 2 MiB */
    c = connect_ok();
    import_npy(c, "big", 1, big.path, R_PART);
    import_npy(c, "small", 1, small.path, R_PART);
    tb = resolve_ok(c, "big", "1", "t");
    ts = resolve_ok(c, "small", "1", "t");
    assert_int_equal(ec_tensor_cache_mode(tb), EC_CACHE_ROWS);
    assert_int_equal(ec_tensor_cache_mode(ts), EC_CACHE_PARTITIONS);
    for (int i = 0; i < 20; i++) {
        for (int k = 0; k < 64; k++)
            ids[k] = k * 3;
        assert_int_equal(gather_check(tb, ids, 64, &big, buf, sizeof(buf)), 0);
        assert_int_equal(gather_check(ts, ids, 64, &small, buf, sizeof(buf)), 0);
    }
    s = tensor_stats_of(c, "big");
    printf("big: mode %d, %llu rows served, %llu hits, %llu rows resident, %llu bytes read "
           "(%.0f per row served)\n", (int)s.mode, (unsigned long long)s.rows_served,
           (unsigned long long)s.hits, (unsigned long long)s.resident_rows,
           (unsigned long long)s.bytes_read,
           (double)s.bytes_read / (double)(s.rows_served ? s.rows_served : 1));
    assert_int_equal(s.mode, EC_CACHE_ROWS);
    assert_int_equal(s.policy, EC_CACHE_AUTO);
    assert_int_equal(s.file_version, 2);
    assert_int_equal(s.rows_served, 20 * 64);
    assert_int_equal(s.hits, 19 * 64);
    assert_int_equal(s.resident_rows, 64);
    /* 64 rows at 3-row strides span 24 blocks: 24 blocks of 4 KiB were read */
    assert_int_equal(s.bytes_read, 24 * 4096);
    s = tensor_stats_of(c, "small");
    assert_int_equal(s.mode, EC_CACHE_PARTITIONS);
    assert_int_equal(s.hits, 19 * 64);
    /* A policy moves big to partitions, and back. */
    assert_int_equal(ec_model_cache_mode(c, "big", "t", EC_CACHE_PARTITIONS), 0);
    assert_int_equal(tensor_stats_of(c, "big").mode, EC_CACHE_PARTITIONS);
    assert_int_equal(tensor_stats_of(c, "big").policy, EC_CACHE_PARTITIONS);
    assert_int_equal(gather_check(tb, ids, 64, &big, buf, sizeof(buf)), 0);
    assert_int_equal(ec_tensor_cache_mode(tb), EC_CACHE_PARTITIONS);
    assert_int_equal(ec_model_cache_mode(c, "big", NULL, EC_CACHE_AUTO), 0);
    assert_int_equal(ec_model_cache_mode(c, "big", "t", EC_CACHE_AUTO), 0);
    assert_int_equal(tensor_stats_of(c, "big").mode, EC_CACHE_ROWS);
    assert_int_equal(gather_check(tb, ids, 64, &big, buf, sizeof(buf)), 0);
    assert_int_equal(ec_tensor_cache_mode(tb), EC_CACHE_ROWS);
    /* Bad requests are refused with a reason. */
    assert_int_equal(ec_model_cache_mode(c, "nope", NULL, EC_CACHE_ROWS), EC_ENOENT);
    assert_int_equal(ec_model_cache_mode(c, "big", NULL, (ec_cache_mode)7), EC_EINVAL);
    ec_tensor_release(tb);
    ec_tensor_release(ts);
    daemon_alive();
    ec_client_close(c);
    table_free(&big);
    table_free(&small);
}

/* ------------------------------------------------------------------ */
/* 10. A version-1 file: partitions only, until `embcache upgrade`       */

/* The one partition file in the daemon's data directory. */
static void part_file(char *out, size_t len)
{
    char cmd[700];
    FILE *p;

    snprintf(cmd, sizeof(cmd), "ls %s/parts/*.ecp", E.data);
    p = popen(cmd, "r");
    assert_non_null(p);
    assert_non_null(fgets(out, (int)len, p));
    pclose(p);
    out[strcspn(out, "\n")] = '\0';
}

/* Rewrite a version-2 partition file as the version 1 that embcache wrote
 * before block checksums: the same header (version 1, no block table), the
 * partition table, then the data. */
static void downgrade_to_v1(const char *path)
{
    size_t len;
    uint8_t *f = ect_read_file(path, &len), *out;
    uint64_t parts, data_off, file_size, v1_off, zero = 0, sum;
    uint32_t one = 1;
    char tmp[700];

    assert_non_null(f);
    memcpy(&parts, f + 112, 8);
    memcpy(&data_off, f + 136, 8);
    memcpy(&file_size, f + 144, 8);
    assert_int_equal(file_size, len);
    v1_off = 4096 + (parts * 32 + 4095) / 4096 * 4096;
    out = calloc(1, v1_off + (len - data_off));
    assert_non_null(out);
    memcpy(out, f, 4096 + parts * 32);
    memcpy(out + v1_off, f + data_off, len - data_off);
    /* Table entries hold file offsets: the data moved. */
    for (uint64_t p = 0; p < parts; p++) {
        uint64_t o;
        memcpy(&o, out + 4096 + p * 32, 8);
        o -= data_off - v1_off;
        memcpy(out + 4096 + p * 32, &o, 8);
    }
    sum = ec_checksum(out + 4096, parts * 32);
    memcpy(out + 152, &sum, 8);
    memcpy(out + 8, &one, 4);
    memcpy(out + 136, &v1_off, 8);
    file_size = v1_off + (len - data_off);
    memcpy(out + 144, &file_size, 8);
    memcpy(out + 168, &zero, 8);
    memcpy(out + 176, &zero, 8);
    memcpy(out + 184, &zero, 8);
    memcpy(out + 160, &zero, 8);
    sum = ec_checksum(out, 4096);
    memcpy(out + 160, &sum, 8);
    snprintf(tmp, sizeof(tmp), "%s.v1", path);
    assert_int_equal(ect_write_file(tmp, out, file_size), 0);
    assert_int_equal(rename(tmp, path), 0);
    free(out);
    free(f);
    {
        ec_partfile_meta m;
        int fd;
        if (ec_partfile_open(path, &m, &fd))
            fail_msg("the version-1 file made here does not open: %s", ec_last_error());
        close(fd);
        assert_int_equal(m.version, 1);
    }
}

static void test_upgrade_v1_file(void **state)
{
    static const char *const args[] = {"--shm-size", "32M", "--budget", "8M", NULL};
    struct table tb;
    ec_client *c;
    ec_tensor *t;
    ec_tensor_stats st;
    char part[600];
    uint64_t changed = 99;
    uint32_t n = 99;
    int64_t ids[64];
    uint8_t buf[64 * 512];

    (void)state;
    env_start("ec-rows", args);
    table_make(&tb, "t.npy", R_ROWS, R_COLS, 41);
    c = connect_ok();
    import_npy(c, "m", 1, tb.path, R_PART);
    part_file(part, sizeof(part));
    downgrade_to_v1(part);
    assert_int_equal(ec_model_refresh(c, "m", "1", &changed), 0);
    assert_int_equal(changed, 0); /* the same partitions in an older file */
    st = tensor_stats_of(c, "m");
    assert_int_equal(st.file_version, 1);
    assert_int_equal(st.mode, EC_CACHE_PARTITIONS); /* 64 MiB, but no block checksums */
    t = resolve_ok(c, "m", "1", "t");
    for (int k = 0; k < 64; k++)
        ids[k] = (int64_t)((uint64_t)k * 2039 % R_ROWS);
    assert_int_equal(gather_check(t, ids, 64, &tb, buf, sizeof(buf)), 0);
    /* Upgrade: verified, rewritten, taken; now it is cached by rows. */
    assert_int_equal(ec_model_upgrade(c, "m", "1", &n), 0);
    assert_int_equal(n, 1);
    st = tensor_stats_of(c, "m");
    assert_int_equal(st.file_version, 2);
    assert_int_equal(st.mode, EC_CACHE_ROWS);
    assert_int_equal(gather_check(t, ids, 64, &tb, buf, sizeof(buf)), 0);
    assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_ROWS);
    assert_true(tensor_stats_of(c, "m").row_faults >= 64);
    gather_all_ok(t, &tb);
    /* Again: nothing left to do. A damaged v1 file is refused, not served. */
    assert_int_equal(ec_model_upgrade(c, "m", "1", &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(ec_model_upgrade(c, "m", "7", &n), EC_ENOENT);
    ec_tensor_release(t);
    daemon_alive();
    ec_client_close(c);
    table_free(&tb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_churn_million_rows, env_teardown),
        cmocka_unit_test_teardown(test_flipped_byte_never_served, env_teardown),
#ifdef EC_TEST_FAULT_INJECTION
        cmocka_unit_test(test_injected_faults),
#endif
        cmocka_unit_test_teardown(test_kill9_mid_block_reads, env_teardown),
        cmocka_unit_test_teardown(test_same_rows_every_way, env_teardown),
        cmocka_unit_test_teardown(test_mode_switch_under_load, env_teardown),
        cmocka_unit_test_teardown(test_restart_and_history, env_teardown),
        cmocka_unit_test_teardown(test_rows_to_emulated_gpu, env_teardown),
        cmocka_unit_test_teardown(test_auto_mode_and_stats, env_teardown),
        cmocka_unit_test_teardown(test_upgrade_v1_file, env_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
