/*
 * test_dynamic.c - dynamic tables end to end (include/embcache_dynamic.h):
 * a real embcached, rows inserted, updated and deleted by int64 key while
 * other processes read them, the capacity policies, kill -9 of the daemon
 * during streams of updates (no acknowledged update lost), snapshots, and
 * retirement.
 *
 * Rows written by these tests are self-describing: 32-bit words (the table
 * is f32, the bits are what matter) w[0], w[1] = the key, w[2] = a version,
 * w[j >= 3] = mix(key, version, j). A reader that finds a row whose words
 * do not agree with each other has seen a torn row; one whose version is
 * older than the last it saw for that key has seen time go backwards.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "itest.h"
#include "testutil.h"

#define DIM 32u /* words per row: 128 bytes */

static uint32_t mixw(int64_t key, uint32_t ver, uint32_t j)
{
    uint64_t x = (uint64_t)key * 0x9e3779b97f4a7c15ull ^ ((uint64_t)ver << 32 | j);

    x ^= x >> 31;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 29;
    return (uint32_t)x;
}

static void row_of(int64_t key, uint32_t ver, uint32_t *w)
{
    w[0] = (uint32_t)(uint64_t)key;
    w[1] = (uint32_t)((uint64_t)key >> 32);
    w[2] = ver;
    for (uint32_t j = 3; j < DIM; j++)
        w[j] = mixw(key, ver, j);
}

/* -1: torn or another key's row; else its version. */
static int64_t row_version(int64_t key, const uint32_t *w)
{
    if (w[0] != (uint32_t)(uint64_t)key || w[1] != (uint32_t)((uint64_t)key >> 32))
        return -1;
    for (uint32_t j = 3; j < DIM; j++)
        if (w[j] != mixw(key, w[2], j))
            return -1;
    return w[2];
}

static int setup(void **state)
{
    static const char *const args[] = {"--allow-uid", "65534", NULL};

    (void)state;
    env_start("ec-dyn", args);
    return 0;
}

/* Import a [rows, DIM] f32 table as (model, 1) and make it dynamic. */
static ec_tensor *dyn_table(ec_client *c, const char *model, uint64_t rows, uint64_t capacity,
                            ec_dyn_policy policy, struct table *tb)
{
    table_make(tb, "t.npy", rows, DIM, 11);
    import_npy(c, model, 1, tb->path, 0);
    if (ec_model_dynamic(c, model, "1", "t", capacity, policy))
        fail_msg("ec_model_dynamic: %s", ec_last_error());
    return resolve_ok(c, model, "1", "t");
}

static void put_rows(ec_tensor *t, const int64_t *keys, size_t n, uint32_t ver,
                     ec_rows_result *res)
{
    uint32_t *rows = malloc(n * DIM * 4);

    assert_non_null(rows);
    for (size_t i = 0; i < n; i++)
        row_of(keys[i], ver, rows + i * DIM);
    if (ec_rows_put(t, keys, n, rows, n * DIM * 4, res))
        fail_msg("ec_rows_put: %s", ec_last_error());
    free(rows);
}

static void expect_version(ec_tensor *t, int64_t key, int64_t ver)
{
    uint32_t w[DIM];
    uint8_t found = 9;
    size_t nf = 9;

    assert_int_equal(ec_rows_find(t, &key, 1, w, sizeof(w), &found, &nf), 0);
    if (ver < 0) {
        assert_int_equal(found, 0);
        assert_int_equal(nf, 0);
        return;
    }
    assert_int_equal(found, 1);
    if (row_version(key, w) != ver)
        fail_msg("key %" PRId64 ": version %" PRId64 ", expected %" PRId64, key,
                 row_version(key, w), ver);
}

static void test_dynamic_basic(void **state)
{
    ec_client *c = connect_ok();
    struct table tb;
    ec_tensor *t = dyn_table(c, "dyn", 1000, 4096, EC_DYN_REFUSE, &tb);
    int64_t ids[1000], keys[] = {-5, INT64_MAX, INT64_MIN, 123456789012345ll, 7};
    uint8_t *buf = malloc(1000 * DIM * 4);
    ec_rows_result res;
    ec_dyn_info info;
    ec_tensor_info ti;
    uint32_t w[DIM];
    uint8_t found[2];

    (void)state;
    assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_DYNAMIC);
    /* The version's rows are the table's first content, keys 0..999. */
    for (int i = 0; i < 1000; i++)
        ids[i] = 999 - i;
    assert_int_equal(ec_tensor_gather(t, ids, 1000, buf, 1000 * DIM * 4), 0);
    for (int i = 0; i < 1000; i++)
        assert_memory_equal(buf + (size_t)i * DIM * 4, tb.data + (size_t)(999 - i) * DIM * 4,
                            DIM * 4);
    /* An absent key: an error for a gather, a zero row for find. */
    ids[0] = 5000;
    assert_int_equal(ec_tensor_gather(t, ids, 1, buf, DIM * 4), EC_ENOENT);
    assert_non_null(strstr(ec_last_error(), "5000"));
    memset(w, 0xff, sizeof(w));
    assert_int_equal(ec_rows_find(t, ids, 1, w, sizeof(w), found, NULL), 0);
    assert_int_equal(found[0], 0);
    assert_int_equal(w[5], 0);
    /* Insert any int64 keys, update one that was there. */
    put_rows(t, keys, 5, 1, &res);
    assert_int_equal(res.inserted, 4);
    assert_int_equal(res.updated, 1);
    assert_true(res.lsn > 0);
    for (int i = 0; i < 5; i++)
        expect_version(t, keys[i], 1);
    /* A key given twice takes its last row. */
    {
        int64_t two[2] = {42, 42};
        uint32_t rows[2 * DIM];
        row_of(42, 3, rows);
        row_of(42, 4, rows + DIM);
        assert_int_equal(ec_rows_put(t, two, 2, rows, sizeof(rows), &res), 0);
        expect_version(t, 42, 4);
    }
    /* Delete: present keys go, absent ones are counted. */
    {
        int64_t del[3] = {-5, 7, 99999};
        assert_int_equal(ec_rows_delete(t, del, 3, &res), 0);
        assert_int_equal(res.deleted, 2);
        assert_int_equal(res.missing, 1);
        expect_version(t, -5, -1);
        expect_version(t, 7, -1);
    }
    /* A batch larger than a message goes as a memfd. */
    {
        size_t n = 3000;
        int64_t *big = malloc(n * 8);
        for (size_t i = 0; i < n; i++)
            big[i] = 1000000 + (int64_t)i * 7;
        put_rows(t, big, n, 9, &res);
        assert_int_equal(res.inserted, n);
        for (size_t i = 0; i < n; i += 97)
            expect_version(t, big[i], 9);
        free(big);
    }
    assert_int_equal(ec_rows_info(t, &info), 0);
    assert_int_equal(info.capacity, 4096);
    assert_int_equal(info.keys, 1000 + 4 - 2 + 3000); /* 42 was a base key */
    /* Wrong sizes are refused before anything is sent. */
    assert_int_equal(ec_rows_put(t, keys, 1, w, 4, NULL), EC_EINVAL);
    assert_int_equal(ec_tensor_info_get(t, &ti), 0);
    /* No view of rows that change. */
    {
        ec_view *v;
        assert_int_equal(ec_tensor_view(t, &v), EC_EINVAL);
    }
    free(buf);
    table_free(&tb);
    ec_tensor_release(t);
    ec_client_close(c);
}

static void test_dynamic_capacity(void **state)
{
    ec_client *c = connect_ok();
    struct table tb, tb2;
    ec_tensor *t = dyn_table(c, "full", 1000, 1024, EC_DYN_REFUSE, &tb);
    int64_t keys[50];
    ec_rows_result res;
    ec_dyn_info info;
    ec_tensor *l;

    (void)state;
    for (int i = 0; i < 50; i++)
        keys[i] = 10000 + i;
    /* 50 new keys into 24 free places: refused whole, nothing applied. */
    {
        uint32_t *rows = calloc(50, DIM * 4);
        assert_int_equal(ec_rows_put(t, keys, 50, rows, 50 * DIM * 4, &res), EC_ENOSPC);
        assert_non_null(strstr(ec_last_error(), "nothing applied"));
        free(rows);
    }
    assert_int_equal(ec_rows_info(t, &info), 0);
    assert_int_equal(info.keys, 1000);
    expect_version(t, keys[0], -1);
    /* 24 fit. */
    put_rows(t, keys, 24, 1, &res);
    assert_int_equal(res.inserted, 24);
    /* evict-lru: the least recently written keys go, in order. */
    ec_tensor_release(t);
    table_make(&tb2, "u.npy", 1000, DIM, 12);
    import_npy(c, "lru", 1, tb2.path, 0);
    assert_int_equal(ec_model_dynamic(c, "lru", "1", "u", 1024, EC_DYN_EVICT_LRU), 0);
    l = resolve_ok(c, "lru", "1", "u");
    {
        int64_t zero = 0;
        put_rows(l, &zero, 1, 5, &res); /* key 0 becomes the most recent */
    }
    put_rows(l, keys, 30, 1, &res);
    assert_int_equal(res.inserted, 30);
    assert_int_equal(res.evicted, 6);
    expect_version(l, 0, 5);
    for (int64_t k = 1; k <= 6; k++)
        expect_version(l, k, -1);
    {
        uint32_t w[DIM];
        int64_t k7 = 7;
        uint8_t f;
        assert_int_equal(ec_rows_find(l, &k7, 1, w, sizeof(w), &f, NULL), 0);
        assert_int_equal(f, 1);
        assert_memory_equal(w, tb2.data + 7 * DIM * 4, DIM * 4);
    }
    assert_int_equal(ec_rows_info(l, &info), 0);
    assert_int_equal(info.keys, 1024);
    assert_int_equal(info.evictions, 6);
    /* Settings of a table are fixed: the same call again is fine, another
     * capacity is refused. */
    assert_int_equal(ec_model_dynamic(c, "lru", "1", "u", 1024, EC_DYN_EVICT_LRU), 0);
    assert_int_equal(ec_model_dynamic(c, "lru", "1", "u", 2048, EC_DYN_EVICT_LRU), EC_EEXIST);
    assert_int_equal(ec_model_dynamic(c, "lru", "1", "u", 10, EC_DYN_EVICT_LRU), EC_EINVAL);
    ec_tensor_release(l);
    table_free(&tb);
    table_free(&tb2);
    ec_client_close(c);
}

struct shared {
    _Atomic int stop;
    _Atomic uint64_t reads[4], torn[4], backwards[4], hot_reads[4];
    _Atomic uint64_t acked;          /* kill -9 test: the last acknowledged batch + 1 */
};

/* A reader process: random keys of 0..nkeys-1 and the hot key, each row
 * checked; versions per key must not go back. */
static int reader(int me, struct shared *S, uint64_t nkeys, int64_t hot)
{
    ec_client *c;
    ec_tensor *t;
    uint32_t *last = calloc(nkeys + 1, 4);
    uint32_t w[64 * DIM];
    int64_t ids[64];
    uint64_t seed = 77 + (uint64_t)me;

    if (ec_client_connect(E.sock, &c) || ec_tensor_resolve(c, "hot", "1", "t", &t))
        return 2;
    while (!atomic_load(&S->stop)) {
        for (int i = 0; i < 64; i++)
            ids[i] = i % 8 == 0 ? hot : (int64_t)(splitmix(&seed) % nkeys);
        if (ec_tensor_gather(t, ids, 64, w, sizeof(w)))
            return 3;
        for (int i = 0; i < 64; i++) {
            int64_t v = row_version(ids[i], w + i * DIM);
            uint64_t slot = ids[i] == hot ? nkeys : (uint64_t)ids[i];
            if (v < 0) {
                atomic_fetch_add(&S->torn[me], 1);
                continue;
            }
            if ((uint32_t)v < last[slot])
                atomic_fetch_add(&S->backwards[me], 1);
            last[slot] = (uint32_t)v;
            if (ids[i] == hot)
                atomic_fetch_add_explicit(&S->hot_reads[me], 1, memory_order_relaxed);
        }
        atomic_fetch_add_explicit(&S->reads[me], 64, memory_order_relaxed);
    }
    free(last);
    ec_tensor_release(t);
    ec_client_close(c);
    return 0;
}

/* Readers in 3 processes while the parent rewrites every key, and one key
 * nonstop: no row is torn, none goes back in time, and readers of the row
 * written nonstop keep reading it. */
static void test_dynamic_readers_never_torn(void **state)
{
    ec_client *c = connect_ok();
    struct shared *S = shared_map(sizeof(*S));
    struct table tb;
    const uint64_t nkeys = 4096;
    const int64_t hot = 1ll << 40;
    int64_t *keys = malloc((nkeys + 1) * 8);
    ec_tensor *t;
    pid_t kids[3];
    double end;
    uint32_t ver = 1;

    (void)state;
    t = dyn_table(c, "hot", 16, 8192, EC_DYN_REFUSE, &tb);
    for (uint64_t i = 0; i < nkeys; i++)
        keys[i] = (int64_t)i;
    keys[nkeys] = hot;
    put_rows(t, keys, nkeys + 1, ver, NULL);
    for (int i = 0; i < 3; i++)
        if ((kids[i] = spawn()) == 0)
            _exit(reader(i, S, nkeys, hot));
    end = now_s() + 2.0;
    while (now_s() < end) {
        /* Every key once in a while, the hot key in every batch. */
        ver++;
        put_rows(t, keys + (ver % 16) * 256, 256, ver, NULL);
        put_rows(t, &keys[nkeys], 1, ver, NULL);
    }
    atomic_store(&S->stop, 1);
    for (int i = 0; i < 3; i++)
        assert_int_equal(reap(kids[i]), 0);
    for (int i = 0; i < 3; i++) {
        print_message("reader %d: %" PRIu64 " rows, %" PRIu64 " of the hot key, %" PRIu64
                      " torn, %" PRIu64 " backwards; %u batches written\n", i,
                      atomic_load(&S->reads[i]), atomic_load(&S->hot_reads[i]),
                      atomic_load(&S->torn[i]), atomic_load(&S->backwards[i]), ver);
        assert_int_equal(atomic_load(&S->torn[i]), 0);
        assert_int_equal(atomic_load(&S->backwards[i]), 0);
        assert_true(atomic_load(&S->hot_reads[i]) > 0);
    }
    assert_true(ver > 10);
    free(keys);
    table_free(&tb);
    ec_tensor_release(t);
    ec_client_close(c);
}

/* A writer process: batch b puts keys b*16 .. b*16+15 (mod 4096) at version
 * b + 1 and records b + 1 once acknowledged. Stops at the first error (the
 * daemon was killed). */
static int writer(struct shared *S)
{
    ec_client *c;
    ec_tensor *t;
    uint32_t rows[16 * DIM];
    int64_t keys[16];

    if (ec_client_connect(E.sock, &c) || ec_tensor_resolve(c, "crash", "1", "t", &t))
        return 2;
    for (uint64_t b = atomic_load(&S->acked);; b++) {
        for (int i = 0; i < 16; i++) {
            keys[i] = (int64_t)((b * 16 + (uint64_t)i) % 4096);
            row_of(keys[i], (uint32_t)(b + 1), rows + i * DIM);
        }
        if (ec_rows_put(t, keys, 16, rows, sizeof(rows), NULL))
            return 0;
        atomic_store(&S->acked, b + 1);
    }
}

/* kill -9 of the daemon's worker during a stream of updates, 20 times: every
 * acknowledged batch is there after the restart, with its exact bytes (or a
 * later version of a key, from a batch logged but not yet acknowledged). */
static void test_dynamic_kill9_replay(void **state)
{
    ec_client *c = connect_ok();
    struct shared *S = shared_map(sizeof(*S));
    struct table tb;
    ec_tensor *t = dyn_table(c, "crash", 16, 8192, EC_DYN_REFUSE, &tb);
    uint64_t seed = 5;

    (void)state;
    ec_tensor_release(t);
    ec_client_close(c);
    for (int cycle = 0; cycle < 20; cycle++) {
        pid_t w = spawn(), worker;
        uint64_t acked;
        uint32_t row[DIM];
        if (w == 0)
            _exit(writer(S));
        usleep(20000 + (useconds_t)(splitmix(&seed) % 80000));
        worker = ect_daemon_worker(E.data);
        if (cycle % 5 == 0) {
            /* The worker alone (the keeper's crash limit allows 4 a minute):
             * a warm restart, the segment kept. */
            assert_int_equal(kill(worker, SIGKILL), 0);
            assert_int_equal(reap(w), 0);
            acked = atomic_load(&S->acked);
            ect_daemon_wait_worker(E.data, E.sock, worker);
        } else {
            /* The whole daemon, keeper and worker: everything in memory is
             * gone; the tables come back from the files alone. */
            assert_int_equal(kill(E.daemon, SIGKILL), 0);
            assert_int_equal(kill(worker, SIGKILL), 0);
            waitpid(E.daemon, NULL, 0);
            assert_int_equal(reap(w), 0);
            acked = atomic_load(&S->acked);
            for (int i = 0; i < 500 && kill(worker, 0) == 0; i++)
                usleep(10000);
            unlink(E.sock);
            E.daemon = ect_daemon_start(E.data, E.sock, NULL);
        }
        c = connect_ok();
        t = resolve_ok(c, "crash", "1", "t");
        assert_int_equal(ec_tensor_cache_mode(t), EC_CACHE_DYNAMIC);
        /* Each key's last acknowledged batch, or a later one. */
        for (uint64_t k = 0; k < 4096 && acked; k++) {
            uint64_t last_b = UINT64_MAX;
            int64_t key = (int64_t)k, v;
            for (uint64_t b = acked; b-- > 0 && b + 1 + 256 >= acked;)
                if ((b * 16) % 4096 <= k && k < (b * 16) % 4096 + 16) {
                    last_b = b;
                    break;
                }
            if (last_b == UINT64_MAX)
                continue;
            assert_int_equal(ec_tensor_gather(t, &key, 1, row, sizeof(row)), 0);
            v = row_version(key, row);
            if (v < (int64_t)(last_b + 1))
                fail_msg("cycle %d: key %" PRIu64 " has version %" PRId64 " but batch %" PRIu64
                         " (version %" PRIu64 ") was acknowledged", cycle, k, v, last_b,
                         last_b + 1);
        }
        print_message("cycle %d: %" PRIu64 " batches acknowledged\n", cycle, acked);
        ec_tensor_release(t);
        ec_client_close(c);
    }
    assert_true(atomic_load(&S->acked) > 20);
    table_free(&tb);
}

/* A snapshot is a new immutable version with the rows and their keys, and
 * the table's new base: a restart after it (and more updates) rebuilds the
 * same table, evictions included. */
static void test_dynamic_snapshot(void **state)
{
    ec_client *c = connect_ok();
    struct table tb;
    ec_tensor *t = dyn_table(c, "snap", 100, 128, EC_DYN_EVICT_LRU, &tb), *s, *sk;
    int64_t keys[40], v = 0;
    ec_rows_result res;
    ec_tensor_info ti;
    ec_dyn_info info;
    pid_t worker;

    (void)state;
    for (int i = 0; i < 40; i++)
        keys[i] = 5000 + i;
    {
        int64_t three = 3; /* written last of the base rows: not the next to go */
        put_rows(t, &three, 1, 2, &res);
    }
    put_rows(t, keys, 20, 2, &res);          /* 120 keys */
    assert_int_equal(ec_model_snapshot(c, "snap", "1", 0, &v), 0);
    assert_int_equal(v, 2);
    /* The new version: 120 rows, least recently written first, and keys. */
    s = resolve_ok(c, "snap", "2", "t");
    sk = resolve_ok(c, "snap", "2", "t.keys");
    assert_int_equal(ec_tensor_cache_mode(s), EC_CACHE_PARTITIONS);
    assert_int_equal(ec_tensor_info_get(s, &ti), 0);
    assert_int_equal(ti.shape[0], 120);
    {
        int64_t idx[2] = {0, 119}, k[2];
        uint32_t w[DIM];
        assert_int_equal(ec_tensor_gather(sk, idx, 2, k, sizeof(k)), 0);
        assert_int_equal(k[0], 0);  /* least recently written first */
        assert_int_equal(k[1], 5019);
        assert_int_equal(ec_tensor_gather(s, &idx[1], 1, w, sizeof(w)), 0);
        assert_int_equal(row_version(5019, w), 2);
    }
    /* More updates, then the worker dies: evictions after the restart are
     * the ones acknowledged before it. */
    put_rows(t, keys + 20, 20, 3, &res);     /* 140 > 128: 12 evicted (0..12 but 3) */
    assert_int_equal(res.evicted, 12);
    ec_tensor_release(t);
    ec_tensor_release(s);
    ec_tensor_release(sk);
    ec_client_close(c);
    worker = ect_daemon_worker(E.data);
    assert_int_equal(kill(worker, SIGKILL), 0);
    ect_daemon_wait_worker(E.data, E.sock, worker);
    c = connect_ok();
    t = resolve_ok(c, "snap", "1", "t");
    assert_int_equal(ec_rows_info(t, &info), 0);
    assert_int_equal(info.keys, 128);
    /* The order of the snapshot is the order of writes (3 was written
     * after the other base rows), not of keys. */
    for (int64_t k = 0; k <= 12; k++)
        expect_version(t, k, k == 3 ? 2 : -1);
    {
        int64_t k13 = 13;
        uint32_t w[DIM];
        assert_int_equal(ec_tensor_gather(t, &k13, 1, w, sizeof(w)), 0);
        assert_memory_equal(w, tb.data + 13 * DIM * 4, DIM * 4);
    }
    for (int i = 0; i < 40; i++)
        expect_version(t, keys[i], i < 20 ? 2 : 3);
    ec_tensor_release(t);
    ec_client_close(c);
    table_free(&tb);
}

/* ec_search over a dynamic table: the live keys, by key, against a brute
 * force over the same rows, for 2 queries (one thread, the vector kernel)
 * and for 64 (the panel kernel; test_ivf's exact searches of a table whose
 * slots span several threads' runs are its reference); deleted keys never
 * come back; through an index of its keys too. */
#define SQ 64
static void test_dynamic_search(void **state)
{
    ec_client *c = connect_ok();
    struct table tb;
    ec_tensor *t = dyn_table(c, "srch", 500, 4096, EC_DYN_REFUSE, &tb);
    int64_t keys[300], del[100], got_ids[SQ * 10];
    float q[SQ * DIM], got[SQ * 10], *rows = malloc(1000 * DIM * 4);
    ec_rows_result res;
    uint64_t seed = 3;

    (void)state;
    for (int i = 0; i < 300; i++)
        keys[i] = (int64_t)(splitmix(&seed) >> 2) - (1ll << 60);
    for (int i = 0; i < 300 * (int)DIM; i++)
        rows[i] = (float)((int64_t)(splitmix(&seed) % 2001) - 1000) / 100.0f;
    assert_int_equal(ec_rows_put(t, keys, 300, rows, 300 * DIM * 4, &res), 0);
    for (int i = 0; i < 100; i++)
        del[i] = i * 5; /* base keys 0, 5, ..., 495 */
    assert_int_equal(ec_rows_delete(t, del, 100, &res), 0);
    for (int i = 0; i < SQ * (int)DIM; i++)
        q[i] = (float)((int64_t)(splitmix(&seed) % 2001) - 1000) / 100.0f;
    for (int run = 0; run < 6; run++) {
        /* The reference: every live key's row, scored in double. */
        int metric = EC_METRIC_IP + run % 3, nq = run < 3 ? 2 : SQ;
        double best[SQ][10];
        int64_t bestk[SQ][10];
        assert_int_equal(ec_search(t, q, (size_t)nq, DIM, 10, (ec_metric)metric, NULL, got,
                                   got_ids), 0);
        for (int qi = 0; qi < nq; qi++) {
            for (int j = 0; j < 10; j++)
                best[qi][j] = -INFINITY, bestk[qi][j] = 0;
            for (int64_t i = -300; i < 500; i++) {
                int64_t key = i < 0 ? keys[i + 300] : i;
                float x[DIM];
                double dot = 0, xx = 0, qq = 0, l2 = 0, sc;
                uint8_t f;
                if (i >= 0 && i % 5 == 0)
                    continue;
                assert_int_equal(ec_rows_find(t, &key, 1, x, sizeof(x), &f, NULL), 0);
                assert_int_equal(f, 1);
                for (unsigned j = 0; j < DIM; j++) {
                    double a = q[qi * DIM + j], b = x[j];
                    dot += a * b, xx += b * b, qq += a * a, l2 += (a - b) * (a - b);
                }
                sc = metric == EC_METRIC_IP ? dot : metric == EC_METRIC_COSINE
                                                        ? (xx > 0 ? dot / sqrt(xx * qq) : 0)
                                                        : -l2;
                for (int j = 0; j < 10; j++)
                    if (sc > best[qi][j]) {
                        memmove(&best[qi][j + 1], &best[qi][j], (9 - j) * sizeof(double));
                        memmove(&bestk[qi][j + 1], &bestk[qi][j], (9 - j) * sizeof(int64_t));
                        best[qi][j] = sc;
                        bestk[qi][j] = key;
                        break;
                    }
            }
            for (int j = 0; j < 10; j++) {
                double want = metric == EC_METRIC_L2 ? -best[qi][j] : best[qi][j];
                if (fabs(got[qi * 10 + j] - want) > 1e-3 * (1 + fabs(want)))
                    fail_msg("metric %d, %d queries, query %d rank %d: score %g (key %" PRId64
                             "), expected %g (key %" PRId64 ")", metric, nq, qi, j,
                             got[qi * 10 + j], got_ids[qi * 10 + j], want, bestk[qi][j]);
                assert_false(got_ids[qi * 10 + j] >= 0 && got_ids[qi * 10 + j] < 500 &&
                             got_ids[qi * 10 + j] % 5 == 0);
            }
        }
    }
    /* An approximate index of its keys (tests/integration/test_ivf.c has
     * the rest): none yet, then one; every list probed, it answers as the
     * exact search, deleted keys included. */
    {
        ec_search_opts so = {.nprobe = 4};
        ec_index_opts io = {.metric = EC_METRIC_IP, .nlist = 16};
        float ex[2 * 10];
        int64_t ex_ids[2 * 10];
        ec_tensor *t2;
        assert_int_equal(ec_search(t, q, 1, DIM, 10, EC_METRIC_IP, &so, got, got_ids),
                         EC_ENOENT);
        assert_non_null(strstr(ec_last_error(), "no index"));
        if (ec_index_build(c, "srch", "1", "t", &io, NULL))
            fail_msg("ec_index_build of a dynamic table: %s", ec_last_error());
        t2 = resolve_ok(c, "srch", "1", "t");
        so.nprobe = 16;
        assert_int_equal(ec_search(t2, q, 2, DIM, 10, EC_METRIC_IP, NULL, ex, ex_ids), 0);
        assert_int_equal(ec_search(t2, q, 2, DIM, 10, EC_METRIC_IP, &so, got, got_ids), 0);
        assert_memory_equal(got_ids, ex_ids, sizeof(ex_ids));
        assert_memory_equal(got, ex, sizeof(ex));
        ec_tensor_release(t2);
    }
    free(rows);
    table_free(&tb);
    ec_tensor_release(t);
    ec_client_close(c);
}

/* A client that may read (another uid, not an administrator) reads the
 * table but cannot change a byte of it, nor make or snapshot one. */
static void test_dynamic_reader_cannot_write(void **state)
{
    ec_client *c = connect_ok();
    struct table tb;
    ec_tensor *t = dyn_table(c, "ro", 100, 1024, EC_DYN_REFUSE, &tb);
    pid_t kid;

    (void)state;
    if (geteuid() != 0) {
        printf("not root: the other-uid part needs setuid; it did not run\n");
        skip();
    }
    assert_int_equal(chmod(E.dir, 0755), 0);
    kid = spawn();
    if (kid == 0) {
        ec_client *c2;
        ec_tensor *t2;
        int64_t key = 5;
        uint32_t w[DIM];
        if (setgid(65534) || setuid(65534))
            _exit(10);
        if (ec_client_connect(E.sock, &c2) || ec_tensor_resolve(c2, "ro", "1", "t", &t2))
            _exit(11);
        if (ec_tensor_gather(t2, &key, 1, w, sizeof(w)) || memcmp(w, tb.data + 5 * DIM * 4,
                                                                  DIM * 4))
            _exit(12);
        if (ec_rows_put(t2, &key, 1, w, sizeof(w), NULL) != EC_EPERM)
            _exit(13);
        if (ec_rows_delete(t2, &key, 1, NULL) != EC_EPERM)
            _exit(14);
        if (ec_model_snapshot(c2, "ro", "1", 0, NULL) != EC_EPERM ||
            ec_model_dynamic(c2, "ro", "1", "t", 2048, EC_DYN_REFUSE) != EC_EPERM)
            _exit(15);
        _exit(0);
    }
    assert_int_equal(reap(kid), 0);
    {
        int64_t key = 5;
        uint32_t w[DIM];
        assert_int_equal(ec_tensor_gather(t, &key, 1, w, sizeof(w)), 0);
        assert_memory_equal(w, tb.data + 5 * DIM * 4, DIM * 4); /* untouched */
    }
    ec_tensor_release(t);
    table_free(&tb);
    ec_client_close(c);
}

/* A log damaged before its tail (not a torn append): the daemon serves
 * everything else, refuses the dynamic tables with a message naming the
 * file, and leaves the log as it found it. */
static void test_dynamic_damaged_log_refused_not_deleted(void **state)
{
    ec_client *c = connect_ok();
    struct table tb;
    ec_tensor *t = dyn_table(c, "dmg", 100, 1024, EC_DYN_REFUSE, &tb), *t2;
    int64_t keys[2] = {500, 501}, key = 7;
    uint32_t w[DIM];
    char path[700];
    uint8_t *before, *after;
    size_t blen, alen;
    FILE *f;

    (void)state;
    put_rows(t, keys, 1, 1, NULL);
    put_rows(t, keys + 1, 1, 1, NULL);
    ec_tensor_release(t);
    ec_client_close(c);
    ect_daemon_stop(E.daemon);
    E.daemon = 0;
    snprintf(path, sizeof(path), "%s/wal/wal-0000000000000001.log", E.data);
    assert_non_null(f = fopen(path, "r+b"));
    assert_int_equal(fseek(f, 32 + 48 + 3, SEEK_SET), 0); /* the first record's first key */
    assert_int_equal(fputc(0x5a, f), 0x5a);
    fclose(f);
    before = ect_read_file(path, &blen);
    E.daemon = ect_daemon_start(E.data, E.sock, (const char *const[]){"--allow-uid", "65534",
                                                                       NULL});
    c = connect_ok();
    t2 = resolve_ok(c, "dmg", "1", "t");
    /* Not served as a table; the version's rows still are, as a tensor. */
    assert_int_equal(ec_tensor_cache_mode(t2), EC_CACHE_PARTITIONS);
    assert_int_equal(ec_tensor_gather(t2, &key, 1, w, sizeof(w)), 0);
    assert_memory_equal(w, tb.data + 7 * DIM * 4, DIM * 4);
    assert_int_equal(ec_model_dynamic(c, "dmg", "1", "t", 1024, EC_DYN_REFUSE), EC_ECORRUPT);
    assert_non_null(strstr(ec_last_error(), "nothing was deleted"));
    assert_non_null(strstr(ec_last_error(), "wal-0000000000000001.log"));
    assert_int_equal(stat_of(c, "dyn_broken"), 1);
    after = ect_read_file(path, &alen);
    assert_int_equal(alen, blen);
    assert_memory_equal(after, before, blen);
    free(before);
    free(after);
    ec_tensor_release(t2);
    table_free(&tb);
    ec_client_close(c);
}

/* Retiring the version drops its table: readers are told to re-resolve,
 * and its memory comes back. */
static void test_dynamic_retire(void **state)
{
    ec_client *c = connect_ok();
    struct table tb;
    ec_tensor *t = dyn_table(c, "gone", 1000, 2048, EC_DYN_REFUSE, &tb);
    uint64_t bytes = stat_of(c, "dynamic_table_bytes");
    int64_t key = 3;
    uint32_t w[DIM];

    (void)state;
    assert_true(bytes > 2048 * DIM * 4);
    assert_int_equal(ec_model_retire(c, "gone", 1, 1), 0);
    for (int i = 0; i < 100 && stat_of(c, "dynamic_table_bytes") != 0; i++)
        usleep(50000);
    assert_int_equal(stat_of(c, "dynamic_table_bytes"), 0);
    assert_int_equal(ec_tensor_gather(t, &key, 1, w, sizeof(w)), EC_ESTALE);
    assert_int_equal(ec_rows_put(t, &key, 1, w, sizeof(w), NULL), EC_ENOENT);
    ec_tensor_release(t);
    table_free(&tb);
    ec_client_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_dynamic_basic, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_capacity, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_readers_never_torn, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_kill9_replay, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_snapshot, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_search, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_reader_cannot_write, setup, env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_damaged_log_refused_not_deleted, setup,
                                        env_teardown),
        cmocka_unit_test_setup_teardown(test_dynamic_retire, setup, env_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
